//! The two databases behind one [`Store`]: SQLite (rusqlite) and PostgreSQL
//! (the `postgres` crate), reached through a handful of calls - run a
//! statement, read rows, a transaction - with values and rows of our own.
//!
//! Statements are written once, in SQLite's spelling with numbered
//! placeholders (`?1`); PostgreSQL gets them as `$1` (translated once per
//! statement and connection, then prepared and kept). A parameter is a
//! [`Value`], bound as whatever type the server inferred for its place (an
//! integer to a `BOOLEAN` column is a boolean), and a column is read back
//! into one, so SQLite's dynamic types and PostgreSQL's strict ones meet in
//! the middle. The few statements that cannot be one text (`rowid`,
//! `INDEXED BY`) are picked per backend where they are run.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::{FromSql, IsNull, ToSql, Type};

use super::{Store, StoreError};
use crate::call::language::Language;

/// A parameter or a column's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    /// SQL NULL.
    Null,
    /// Any integer, and booleans as 0/1.
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(Cow<'a, str>),
    /// Bytes.
    Blob(Cow<'a, [u8]>),
}

/// `[Value; N]` of the arguments, for the statement calls.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$($crate::store::Value::from($arg)),*][..]
    };
}
pub(crate) use args;

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value<'_> {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}

impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}

impl From<u8> for Value<'_> {
    fn from(v: u8) -> Self {
        Value::Int(v.into())
    }
}

impl From<u16> for Value<'_> {
    fn from(v: u16) -> Self {
        Value::Int(v.into())
    }
}

impl From<u64> for Value<'_> {
    /// Saturates: no count we store comes near 2^63.
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value<'_> {
    fn from(v: usize) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(Cow::Borrowed(v))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(Cow::Borrowed(v))
    }
}

impl From<String> for Value<'_> {
    fn from(v: String) -> Self {
        Value::Text(Cow::Owned(v))
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Blob(Cow::Borrowed(v))
    }
}

impl<'a> From<&'a Language> for Value<'a> {
    fn from(v: &'a Language) -> Self {
        Value::Text(Cow::Borrowed(v.as_str()))
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl<'a> From<&'a Option<String>> for Value<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(Value::Null, Into::into)
    }
}

impl Value<'_> {
    /// What kind of value this is, for error messages (never the value:
    /// it may be a code or a hash).
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

impl rusqlite::types::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

/// Binds as the type PostgreSQL inferred for the placeholder, so one
/// statement text serves both databases.
impl ToSql for Value<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let mismatch = || format!("{} for a parameter of type {ty}", self.kind()).into();
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => v.to_string().as_str().to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Text(v) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    out.extend_from_slice(v.as_bytes());
                    Ok(IsNull::No)
                }
                _ => Err(mismatch()),
            },
            Value::Blob(v) => match *ty {
                Type::BYTEA => {
                    out.extend_from_slice(v);
                    Ok(IsNull::No)
                }
                _ => Err(mismatch()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A PostgreSQL column read as a [`Value`], whatever its type among those
/// the schema uses.
struct AnyColumn<'a>(Value<'a>);

impl<'a> FromSql<'a> for AnyColumn<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(AnyColumn(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                Value::Text(Cow::Borrowed(<&str>::from_sql(ty, raw)?))
            }
            Type::BYTEA => Value::Blob(Cow::Borrowed(raw)),
            _ => return Err(format!("a column of type {ty}, which the store does not read").into()),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(AnyColumn(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A Rust type a column is read into.
pub(crate) trait Column: Sized {
    /// The value as this type; the error says what was found instead.
    fn from_value(v: Value<'_>) -> Result<Self, String>;
}

fn wrong(v: &Value<'_>, want: &str) -> String {
    format!("{} where {want} was expected", v.kind())
}

impl Column for i64 {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i),
            other => Err(wrong(&other, "an integer")),
        }
    }
}

/// The narrower integers, range-checked.
macro_rules! int_column {
    ($($t:ty),*) => {$(
        impl Column for $t {
            fn from_value(v: Value<'_>) -> Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
int_column!(i32, u32, u16, u64, usize);

impl Column for bool {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i != 0),
            other => Err(wrong(&other, "a boolean")),
        }
    }
}

impl Column for f64 {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(wrong(&other, "a number")),
        }
    }
}

impl Column for String {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Text(t) => Ok(t.into_owned()),
            other => Err(wrong(&other, "text")),
        }
    }
}

impl Column for Vec<u8> {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.into_owned()),
            other => Err(wrong(&other, "bytes")),
        }
    }
}

/// A language is stored as its name; a row naming something that is not a
/// language (a hand edit) reads as an error, never as a name that could
/// reach a path or an AGI command.
impl Column for Language {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        let name = String::from_value(v)?;
        Language::parse(&name).ok_or_else(|| format!("{name:?} is not a language name"))
    }
}

impl<T: Column> Column for Option<T> {
    fn from_value(v: Value<'_>) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One result row, of either database.
pub(crate) enum Row<'r> {
    /// rusqlite's.
    Sqlite(&'r rusqlite::Row<'r>),
    /// postgres's.
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `i` (from 0) as `T`; a value of another type is
    /// [`StoreError::Corrupt`], naming the column.
    pub(crate) fn get<T: Column>(&self, i: usize) -> Result<T, StoreError> {
        let value = match self {
            Row::Sqlite(row) => {
                use rusqlite::types::ValueRef;
                match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) => Value::Text(
                        std::str::from_utf8(t)
                            .map(Cow::Borrowed)
                            .map_err(|_| StoreError::Corrupt(format!("column {i}: text that is not UTF-8")))?,
                    ),
                    ValueRef::Blob(b) => Value::Blob(Cow::Borrowed(b)),
                }
            }
            Row::Postgres(row) => row.try_get::<_, AnyColumn<'_>>(i)?.0,
        };
        T::from_value(value).map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
    }
}

/// SQL text as SQLite reads it, in PostgreSQL's spelling: `?N` -> `$N`
/// (a bare `?` takes the next number), outside quoted strings and names.
pub(crate) fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    let mut bare = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        out.push(d);
                    }
                } else {
                    bare += 1;
                    out.push_str(&bare.to_string());
                }
            }
            (None, c) => out.push(c),
        }
    }
    out
}

/// One PostgreSQL connection and the statements it has prepared.
pub(crate) struct PgConn {
    pub(crate) client: postgres::Client,
    /// Prepared statements by their SQLite text.
    statements: HashMap<String, postgres::Statement>,
    /// An error said the connection is gone (the client may not know yet).
    lost: bool,
}

impl PgConn {
    pub(crate) fn new(client: postgres::Client) -> PgConn {
        PgConn { client, statements: HashMap::new(), lost: false }
    }

    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.client.prepare(&to_postgres(sql));
        let stmt = self.seen(stmt)?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    /// Passes `result` on, noting whether its error means the connection
    /// is lost: closed, a broken socket, or the server ending the session
    /// (FATAL: a restart, `pg_terminate_backend`). A statement's own
    /// ERROR leaves the connection usable.
    fn seen<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            let fatal = e.as_db_error().is_some_and(|d| matches!(d.severity(), "FATAL" | "PANIC"));
            let io = std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>());
            if e.is_closed() || fatal || io {
                self.lost = true;
            }
        }
        Ok(result?)
    }
}

/// The connection under a [`Store`].
pub(crate) enum Conn {
    /// A SQLite file (or memory).
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL server.
    Postgres(Box<RefCell<PgConn>>),
}

/// A transaction's lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxKind {
    /// Locks as statements need them (SQLite's `BEGIN`).
    Deferred,
    /// One such transaction at a time, whoever else writes: SQLite's
    /// `BEGIN IMMEDIATE`; on PostgreSQL an advisory lock every daemon on
    /// the database takes, so checks made in it (quotas, queue size) still
    /// hold when it commits.
    Exclusive,
}

/// The advisory lock key of [`TxKind::Exclusive`] transactions (`voice-otp`
/// in ASCII, to stay clear of other applications' keys).
const EXCLUSIVE_LOCK: i64 = 0x766f_6963_652d_6f74;

fn pg_params<'v>(args: &'v [Value<'_>]) -> Vec<&'v (dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Store {
    /// Whether this store is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.conn, Conn::Postgres(_))
    }

    /// `sqlite` or `postgres`, whichever this store runs on: for the few
    /// statements that differ.
    pub(crate) fn pick<'s>(&self, sqlite: &'s str, postgres: &'s str) -> &'s str {
        if self.is_postgres() { postgres } else { sqlite }
    }

    /// Runs one statement; returns the rows it changed.
    pub(crate) fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<usize, StoreError> {
        match &self.conn {
            Conn::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(args))?),
            Conn::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let stmt = pg.prepared(sql)?;
                let n = pg.client.execute(&stmt, &pg_params(args));
                Ok(usize::try_from(pg.seen(n)?).unwrap_or(usize::MAX))
            }
        }
    }

    /// Every row of a query, each through `f`.
    pub(crate) fn query<T>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        match &self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(f(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Conn::Postgres(pg) => {
                let rows = {
                    let mut pg = pg.borrow_mut();
                    let stmt = pg.prepared(sql)?;
                    let rows = pg.client.query(&stmt, &pg_params(args));
                    pg.seen(rows)?
                };
                rows.iter().map(|row| f(&Row::Postgres(row))).collect()
            }
        }
    }

    /// The first row of a query through `f`, if there is one.
    pub(crate) fn query_opt<T>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match &self.conn {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                rows.next()?.map(|row| f(&Row::Sqlite(row))).transpose()
            }
            Conn::Postgres(pg) => {
                let row = {
                    let mut pg = pg.borrow_mut();
                    let stmt = pg.prepared(sql)?;
                    // At most one row is wanted: the queries here are by
                    // key or aggregate, so `query` reads no more than that.
                    let rows = pg.client.query(&stmt, &pg_params(args));
                    pg.seen(rows)?.into_iter().next()
                };
                row.map(|row| f(&Row::Postgres(&row))).transpose()
            }
        }
    }

    /// The first row of a query through `f`; no row is an error (for
    /// aggregates, which always have one).
    pub(crate) fn query_one<T>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.query_opt(sql, args, f)?
            .ok_or_else(|| StoreError::Corrupt("a query that always has a row had none".into()))
    }

    /// Runs statements without parameters (schema changes, transaction
    /// control), one after the other.
    pub(crate) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match &self.conn {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let done = pg.client.batch_execute(sql);
                pg.seen(done)
            }
        }
    }

    /// Runs `f` as one transaction: what it writes commits together, or -
    /// on an error - not at all. Inside another transaction it is a
    /// savepoint of that one: its writes go with the outer commit, and an
    /// error undoes only its own.
    pub(crate) fn tx<R>(&self, kind: TxKind, f: impl FnOnce(&Store) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let depth = self.tx_begin(kind)?;
        let result = f(self);
        self.tx_end(depth, result)
    }

    /// Opens a transaction (or, inside one, a savepoint); returns the depth
    /// to hand [`Store::tx_end`].
    pub(crate) fn tx_begin(&self, kind: TxKind) -> Result<u32, StoreError> {
        let depth = self.depth.get();
        if depth == 0 {
            match (&self.conn, kind) {
                (Conn::Sqlite(_), TxKind::Deferred) | (Conn::Postgres(_), TxKind::Deferred) => self.batch("BEGIN")?,
                (Conn::Sqlite(_), TxKind::Exclusive) => self.batch("BEGIN IMMEDIATE")?,
                (Conn::Postgres(_), TxKind::Exclusive) => {
                    self.batch(&format!("BEGIN; SELECT pg_advisory_xact_lock({EXCLUSIVE_LOCK})"))?
                }
            }
        } else {
            self.batch(&format!("SAVEPOINT voice_otp_{depth}"))?;
        }
        self.depth.set(depth + 1);
        Ok(depth)
    }

    /// Commits (or releases the savepoint) on `Ok`, rolls back on `Err`.
    pub(crate) fn tx_end<R>(&self, depth: u32, result: Result<R, StoreError>) -> Result<R, StoreError> {
        self.depth.set(depth);
        match result {
            Ok(r) => {
                if depth == 0 {
                    self.batch("COMMIT")?;
                } else {
                    self.batch(&format!("RELEASE SAVEPOINT voice_otp_{depth}"))?;
                }
                Ok(r)
            }
            Err(e) => {
                let _ = if depth == 0 {
                    self.batch("ROLLBACK")
                } else {
                    self.batch(&format!("ROLLBACK TO SAVEPOINT voice_otp_{depth}; RELEASE SAVEPOINT voice_otp_{depth}"))
                };
                Err(e)
            }
        }
    }

    /// Undoes a transaction a panicking operation left open, so the next
    /// operation does not run inside it.
    pub(crate) fn abandon_open_transaction(&self) {
        let open = match &self.conn {
            Conn::Sqlite(c) => !c.is_autocommit(),
            Conn::Postgres(_) => self.depth.get() > 0,
        };
        self.depth.set(0);
        if open {
            tracing::error!("a database operation left a transaction open; rolled back");
            let _ = self.batch("ROLLBACK");
        }
    }

    /// Whether the connection is gone for good (PostgreSQL restarted, the
    /// network cut): the database thread then opens a new one.
    pub(crate) fn is_broken(&self) -> bool {
        match &self.conn {
            Conn::Sqlite(_) => false,
            Conn::Postgres(pg) => {
                let pg = pg.borrow();
                pg.lost || pg.client.is_closed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_dollars_outside_strings() {
        assert_eq!(to_postgres("SELECT ?1, ?12 FROM t WHERE a = ?2"), "SELECT $1, $12 FROM t WHERE a = $2");
        assert_eq!(to_postgres("SELECT '?1', \"a?b\", ?3"), "SELECT '?1', \"a?b\", $3");
        assert_eq!(to_postgres("VALUES (?, ?)"), "VALUES ($1, $2)");
        assert_eq!(to_postgres("SELECT 'it''s ?', ?1"), "SELECT 'it''s ?', $1");
    }

    #[test]
    fn values_never_show_in_their_kind() {
        assert_eq!(Value::from("482915").kind(), "text");
        assert_eq!(Value::from(Some(3u32)), Value::Int(3));
        assert_eq!(Value::from(None::<&str>), Value::Null);
        assert_eq!(Value::from(true), Value::Int(1));
    }

    #[test]
    fn columns_read_back_and_refuse_other_types() {
        assert_eq!(u32::from_value(Value::Int(7)), Ok(7));
        assert!(u16::from_value(Value::Int(70_000)).is_err());
        assert_eq!(Option::<String>::from_value(Value::Null), Ok(None));
        assert!(String::from_value(Value::Int(1)).is_err());
        assert!(Language::from_value(Value::from("../../etc")).is_err());
    }
}
