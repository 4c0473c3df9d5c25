//! Request parameters from the query string and a form-encoded body, with
//! the checks every field shares: present, given once, not empty.

/// Parameters in arrival order (query first, then body). Repeats are kept so
/// they can be refused: a repeated field is ambiguous, and different layers
/// (proxies, frameworks) disagree on which copy wins.
pub struct Params(Vec<(String, String)>);

/// Why a field was refused; rendered as `<field> <why>`.
#[derive(Debug, PartialEq, Eq)]
pub enum ParamError {
    /// Not given.
    Missing(&'static str),
    /// Given more than once.
    Repeated(&'static str),
    /// Given empty.
    Empty(&'static str),
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamError::Missing(field) => write!(f, "{field} is required"),
            ParamError::Repeated(field) => write!(f, "{field} is given more than once"),
            ParamError::Empty(field) => write!(f, "{field} is empty"),
        }
    }
}

impl ParamError {
    /// The field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            ParamError::Missing(field) | ParamError::Repeated(field) | ParamError::Empty(field) => field,
        }
    }
}

impl Params {
    /// Decodes `application/x-www-form-urlencoded` pieces (a query string
    /// and/or a body). Invalid UTF-8 after percent-decoding becomes U+FFFD,
    /// which no field accepts.
    pub fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Params {
        let mut pairs = Vec::new();
        for piece in pieces {
            pairs.extend(form_urlencoded::parse(piece).map(|(k, v)| (k.into_owned(), v.into_owned())));
        }
        Params(pairs)
    }

    /// The one non-empty value of `field`.
    pub fn single(&self, field: &'static str) -> Result<&str, ParamError> {
        let mut values = self.0.iter().filter(|(k, _)| k == field).map(|(_, v)| v.as_str());
        let first = values.next().ok_or(ParamError::Missing(field))?;
        if values.next().is_some() {
            return Err(ParamError::Repeated(field));
        }
        if first.is_empty() {
            return Err(ParamError::Empty(field));
        }
        Ok(first)
    }

    /// The one non-empty value of an optional `field`: `Ok(None)` when
    /// absent, an error when repeated or empty.
    pub fn optional(&self, field: &'static str) -> Result<Option<&str>, ParamError> {
        match self.single(field) {
            Ok(v) => Ok(Some(v)),
            Err(ParamError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_absent_present_repeated_empty() {
        let p = Params::decode([b"a=1&b=&c=x&c=y".as_slice()]);
        assert_eq!(p.optional("a"), Ok(Some("1")));
        assert_eq!(p.optional("b"), Err(ParamError::Empty("b")));
        assert_eq!(p.optional("c"), Err(ParamError::Repeated("c")));
        assert_eq!(p.optional("d"), Ok(None));
    }

    #[test]
    fn single_missing_repeated_empty() {
        let p = Params::decode([b"a=1&b=&c=x&c=y".as_slice()]);
        assert_eq!(p.single("a"), Ok("1"));
        assert_eq!(p.single("b"), Err(ParamError::Empty("b")));
        assert_eq!(p.single("c"), Err(ParamError::Repeated("c")));
        assert_eq!(p.single("d"), Err(ParamError::Missing("d")));
    }

    #[test]
    fn query_and_body_together_count_as_repeats() {
        let p = Params::decode([b"code=1234".as_slice(), b"code=5678".as_slice()]);
        assert_eq!(p.single("code"), Err(ParamError::Repeated("code")));
    }

    #[test]
    fn percent_decoding() {
        let p = Params::decode([b"number=%2B923001234567&x=a+b&bad=%0D%0A".as_slice()]);
        assert_eq!(p.single("number"), Ok("+923001234567"));
        assert_eq!(p.single("x"), Ok("a b"));
        assert_eq!(p.single("bad"), Ok("\r\n"));
    }
}
