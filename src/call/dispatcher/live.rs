//! Calls whose FastAGI session is running, shared by the FastAGI handler
//! (which claims a call for its session) and the dispatcher (which leaves
//! such calls to it: reconciliation skips them, a `Hangup` of an answered
//! call waits for its session).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::call::CallId;

/// Calls whose FastAGI session is running; the AGI handler owns their
/// final status.
#[derive(Clone, Default)]
pub struct LiveCalls(Arc<Mutex<HashSet<CallId>>>);

impl LiveCalls {
    /// Claims `id` for a FastAGI session; `None` if another session has it.
    /// The claim lasts as long as the returned guard: however the session
    /// ends - returning, an error, a panic in its task - it is released, so
    /// reconciliation never skips a call forever for a session long gone.
    pub fn claim(&self, id: &CallId) -> Option<Claim> {
        let fresh = self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        fresh.then(|| Claim { live: self.clone(), id: id.clone() })
    }

    /// True while a session runs for `id`.
    pub fn contains(&self, id: &CallId) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    /// How many FastAGI sessions are reading a code right now.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A FastAGI session's hold on its call (see [`LiveCalls::claim`]).
pub struct Claim {
    live: LiveCalls,
    id: CallId,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.live.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_per_call_released_however_the_session_ends() {
        let live = LiveCalls::default();
        let id = CallId::generate();
        let claim = live.claim(&id).expect("first session");
        assert!(live.claim(&id).is_none(), "a second session for the same call");
        assert!(live.contains(&id) && live.count() == 1);
        let panicked = std::thread::spawn(move || {
            let _held = claim;
            panic!("the session's task panics");
        })
        .join();
        assert!(panicked.is_err());
        assert!(!live.contains(&id) && live.count() == 0, "released by the unwinding");
        assert!(live.claim(&id).is_some());
    }
}
