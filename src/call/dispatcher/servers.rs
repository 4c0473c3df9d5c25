//! The Asterisk servers calls are placed through: one AMI link to each
//! `[[asterisk]]` entry (or the single `[ami]` server), with what the
//! dialler needs to know of it (name, capacity, weight, pacing).
//!
//! The daemon builds [`AsteriskServers`] once; the dispatcher dials through
//! it and the ops endpoints read its links' state. A server is known by its
//! position in the config everywhere inside the daemon and by its name in
//! the database, logs and metrics.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::ami::{AmiClient, AmiConfig};
use crate::config::AsteriskConfig;

/// One Asterisk server and the AMI link to it.
pub struct AsteriskServer {
    /// Its configured name, recorded on the calls placed through it.
    pub name: String,
    /// The AMI link.
    pub ami: AmiClient,
    /// Calls in flight on it at most.
    pub max_concurrent_calls: u32,
    /// Originates per second at most; 0: unpaced.
    pub max_calls_per_second: u32,
    /// Its share of the calls.
    pub weight: u32,
}

/// Every configured server, in config order. Cheap to clone.
#[derive(Clone)]
pub struct AsteriskServers(Arc<[AsteriskServer]>);

impl AsteriskServers {
    /// Starts an AMI link to each server of `configs` (they come up in the
    /// background), until `shutdown`.
    pub fn connect(configs: &[AsteriskConfig], shutdown: &CancellationToken) -> AsteriskServers {
        AsteriskServers::with_links(configs, |c| {
            let ami = AmiConfig::new(c.host.clone(), c.port, c.username.clone(), c.secret.expose().to_owned());
            AmiClient::spawn(ami, shutdown.clone())
        })
    }

    /// `configs`' servers with the links `link` makes (tests give their own).
    pub fn with_links(
        configs: &[AsteriskConfig],
        mut link: impl FnMut(&AsteriskConfig) -> AmiClient,
    ) -> AsteriskServers {
        AsteriskServers(
            configs
                .iter()
                .map(|c| AsteriskServer {
                    name: c.name.clone(),
                    ami: link(c),
                    max_concurrent_calls: c.max_concurrent_calls,
                    max_calls_per_second: c.max_calls_per_second,
                    weight: c.weight,
                })
                .collect(),
        )
    }

    /// The servers, in config order.
    pub fn iter(&self) -> std::slice::Iter<'_, AsteriskServer> {
        self.0.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a loaded config (it always has a server).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The server at `index` (config order).
    pub fn get(&self, index: usize) -> Option<&AsteriskServer> {
        self.0.get(index)
    }

    /// The position of the server named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|s| s.name == name)
    }
}
