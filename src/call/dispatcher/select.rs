//! Which server the next call goes to: smooth weighted round robin over the
//! servers that can take a call now (logged in, a free slot, not held back
//! by their pacing).
//!
//! Each placed call adds every candidate's weight to its running score, takes the
//! highest and takes the candidates' total off the winner. Over any run of
//! picks each server gets its weight's share, spread out rather than in
//! blocks (weights 2:1 give a, b, a, a, b, a - not a, a, b). A server that
//! is not a candidate scores nothing meanwhile: while it is down its share
//! goes to the others, and when it is back it gets no burst to catch up.
//! A pick costs one pass over the servers - a handful - never over calls.

/// The running scores, one per server (config order).
#[derive(Debug, Clone)]
pub(super) struct Picker {
    scores: Vec<i64>,
}

impl Picker {
    /// Scores for `servers` servers, all even.
    pub(super) fn new(servers: usize) -> Picker {
        Picker { scores: vec![0; servers] }
    }

    /// The server the next call goes to among `candidates` (server index,
    /// weight); `None` if there are none. Ties go to the lower index. Only
    /// looks: a pick counts once [`Picker::commit`]ted, when the call was
    /// actually placed there - a look that found the queue empty or the
    /// server full must not move the rotation on, or a server could be
    /// skipped every time.
    pub(super) fn choose(&self, candidates: &[(usize, u32)]) -> Option<usize> {
        let score = |&(i, weight): &(usize, u32)| self.scores[i] + i64::from(weight);
        let mut best: Option<(usize, i64)> = None;
        for c in candidates {
            if best.is_none_or(|(_, s)| score(c) > s) {
                best = Some((c.0, score(c)));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Counts a call placed on `chosen`, picked by [`Picker::choose`] among
    /// `candidates`.
    pub(super) fn commit(&mut self, candidates: &[(usize, u32)], chosen: usize) {
        let mut total = 0;
        for &(i, weight) in candidates {
            self.scores[i] += i64::from(weight);
            total += i64::from(weight);
        }
        self.scores[chosen] -= total;
    }

    /// [`Picker::choose`] and [`Picker::commit`] in one.
    #[cfg(test)]
    fn pick(&mut self, candidates: &[(usize, u32)]) -> Option<usize> {
        let chosen = self.choose(candidates)?;
        self.commit(candidates, chosen);
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(picker: &mut Picker, candidates: &[(usize, u32)], n: usize) -> Vec<usize> {
        (0..n).map(|_| picker.pick(candidates).unwrap()).collect()
    }

    #[test]
    fn equal_weights_alternate() {
        let mut p = Picker::new(2);
        assert_eq!(picks(&mut p, &[(0, 1), (1, 1)], 6), [0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn shares_follow_the_weights_spread_out() {
        let mut p = Picker::new(3);
        let got = picks(&mut p, &[(0, 5), (1, 1), (2, 1)], 70);
        let count = |i| got.iter().filter(|&&g| g == i).count();
        assert_eq!((count(0), count(1), count(2)), (50, 10, 10));
        // Never more than the weight in a row: spread, not blocks.
        let mut p = Picker::new(2);
        assert_eq!(picks(&mut p, &[(0, 2), (1, 1)], 6), [0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn a_server_left_out_gets_nothing_and_no_burst_when_back() {
        let mut p = Picker::new(2);
        assert_eq!(picks(&mut p, &[(0, 1), (1, 1)], 2), [0, 1]);
        // Server 0 is down (or full, or paced): every call goes to 1.
        assert_eq!(picks(&mut p, &[(1, 1)], 5), [1; 5]);
        // Back: the two alternate again; 0 does not take five in a row.
        let back = picks(&mut p, &[(0, 1), (1, 1)], 6);
        assert_eq!(back.iter().filter(|&&g| g == 0).count(), 3, "{back:?}");
    }

    #[test]
    fn no_candidates_no_pick() {
        let mut p = Picker::new(2);
        assert_eq!(p.pick(&[]), None);
    }

    #[test]
    fn a_look_that_placed_no_call_does_not_move_the_rotation() {
        let mut p = Picker::new(2);
        let both = [(0, 1), (1, 1)];
        // Each call: one look that places it, one that finds the queue empty.
        let mut placed = Vec::new();
        for _ in 0..4 {
            let chosen = p.choose(&both).unwrap();
            p.commit(&both, chosen);
            placed.push(chosen);
            let _empty_queue = p.choose(&both);
        }
        assert_eq!(placed, [0, 1, 0, 1]);
    }
}
