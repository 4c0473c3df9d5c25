//! What every HTTP handler shares: the configuration, the database, the
//! parts of the daemon a request reaches. The daemon builds it once.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::auth::Authenticator;
use crate::call::dispatcher::{AsteriskServers, Dispatcher, LiveCalls};
use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::Db;
use crate::verify::VerifyKey;

/// What HTTP handlers share.
pub struct App {
    /// The loaded configuration.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// Credential checks.
    pub auth: Authenticator,
    /// Where accepted calls go.
    pub dispatcher: Dispatcher,
    /// The Asterisk servers' AMI links, for health and metrics.
    pub servers: AsteriskServers,
    /// FastAGI sessions running, for metrics.
    pub live: LiveCalls,
    /// True while the FastAGI server is serving.
    pub agi_listening: Arc<AtomicBool>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Abuse limits and the toll-fraud guard.
    pub limits: Limits,
    /// The key verification codes are derived from.
    pub verify_key: VerifyKey,
}
