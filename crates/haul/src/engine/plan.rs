//! The plan of a segmented transfer: which byte ranges of one file are fetched by which
//! connection, and what is already in the part file.
//!
//! Plain data, no I/O. A fresh file starts as one piece, `[0, total)`, owned by the first
//! request (which streams the whole file); a resumed one as the ranges still missing. Each piece
//! has a `start`, `received` (bytes up to here were taken by its connection), `written` (bytes
//! up to here are in the part file) and an `end` that can move down.
//!
//! **Work stealing** is the only way a file is cut: a connection that joins, or finishes its
//! piece, takes the next piece nobody has, or else the back half of the piece with the most
//! bytes left: that piece's `end` moves down to the middle of what it has left, and a new piece
//! from there to the old end goes to the thief. The victim sees its new `end` at its next chunk
//! and stops there, so one slow connection never holds the file back (aria2 splits the same
//! way). A piece is cut while at least twice [`STEAL_FLOOR`] of it is left: a slow connection
//! ends holding at most that much. (`--min-split-size` bounds how many connections a file gets,
//! one per that many bytes; see [`Plan::pieces_for`].)
//!
//! The part file holds `[start, written)` of every piece; what the archive records for resume is
//! the complement: the ranges `[written, end)`, which always cover every byte not yet written.

/// A piece is cut for a thief only while at least twice this much of it is left.
pub(crate) const STEAL_FLOOR: u64 = 64 * 1024;

/// Offsets of a stolen half are rounded down to this (page-aligned writes).
const ALIGN: u64 = 4096;

/// One range of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    start: u64,
    received: u64,
    written: u64,
    end: u64,
    /// The connection working on it.
    owner: Option<u64>,
}

impl Piece {
    fn left(&self) -> u64 {
        self.end.saturating_sub(self.received)
    }
}

/// A claimed range: fetch `[from, to)` into piece `piece`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) piece: usize,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// The pieces of one file.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    total: u64,
    pieces: Vec<Piece>,
    /// Pieces made by stealing (for the summary and tests).
    pub(crate) steals: u64,
}

impl Plan {
    /// How many pieces a file of `total` bytes is cut into: at most `split`, none smaller than
    /// `min`; 1 means "do not split".
    pub(crate) fn pieces_for(total: u64, split: usize, min: u64) -> usize {
        let most = total / min.max(1);
        usize::try_from(most).unwrap_or(usize::MAX).clamp(1, split.max(1))
    }

    /// A fresh plan: one piece, the whole file (its first request is already streaming it).
    pub(crate) fn new(total: u64) -> Self {
        Self::resume(total, &[(0, total)])
    }

    /// A plan for the ranges still `missing` (sorted, disjoint, inside the file), one piece
    /// each.
    pub(crate) fn resume(total: u64, missing: &[(u64, u64)]) -> Self {
        let pieces = missing
            .iter()
            .filter(|(from, to)| from < to)
            .map(|&(start, end)| Piece {
                start,
                received: start,
                written: start,
                end,
                owner: None,
            })
            .collect();
        Self {
            total,
            pieces,
            steals: 0,
        }
    }

    /// The file's length.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Gives `conn` the first piece nobody works on (no request of it has started), else the
    /// back half of the piece with the most left. `None`: nothing left to give.
    pub(crate) fn claim(&mut self, conn: u64) -> Option<Claim> {
        if let Some(i) = self.pieces.iter().position(|p| p.owner.is_none() && p.left() > 0) {
            let piece = &mut self.pieces[i];
            piece.owner = Some(conn);
            return Some(Claim {
                piece: i,
                from: piece.received,
                to: piece.end,
            });
        }
        let (i, victim) = self
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.owner.is_some())
            .max_by_key(|(_, p)| p.left())?;
        if victim.left() < 2 * STEAL_FLOOR {
            return None;
        }
        let middle = aligned(victim.received + victim.left() / 2);
        let end = victim.end;
        self.pieces[i].end = middle;
        self.pieces.push(Piece {
            start: middle,
            received: middle,
            written: middle,
            end,
            owner: Some(conn),
        });
        self.steals += 1;
        Some(Claim {
            piece: self.pieces.len() - 1,
            from: middle,
            to: end,
        })
    }

    /// `conn` received `len` more bytes of `piece`: how many of them to keep (the piece's end
    /// may have moved down since). 0 once the piece is complete or no longer this connection's.
    pub(crate) fn receive(&mut self, piece: usize, conn: u64, len: u64) -> u64 {
        let p = &mut self.pieces[piece];
        if p.owner != Some(conn) {
            return 0;
        }
        let keep = len.min(p.left());
        p.received += keep;
        keep
    }

    /// True once `piece` has received everything up to its end.
    pub(crate) fn is_received(&self, piece: usize) -> bool {
        self.pieces[piece].left() == 0
    }

    /// Bytes of `piece` up to `upto` are in the part file.
    pub(crate) fn written(&mut self, piece: usize, upto: u64) {
        let p = &mut self.pieces[piece];
        p.written = p.written.max(upto.min(p.received));
    }

    /// `conn` stops working on `piece` (its request ended, failed or was cancelled): what it
    /// received but did not write is given back, and the rest goes to the next claim.
    pub(crate) fn release(&mut self, piece: usize, conn: u64) {
        let p = &mut self.pieces[piece];
        if p.owner == Some(conn) {
            p.owner = None;
            p.received = p.written;
        }
    }

    /// The part file's bytes from 0 with no gap: its first `written_prefix()` bytes are in it
    /// (and final: a written byte is never written again).
    pub(crate) fn written_prefix(&self) -> u64 {
        self.pieces
            .iter()
            .filter(|p| p.written < p.end)
            .map(|p| p.written)
            .min()
            .unwrap_or(self.total)
    }

    /// True when every byte of the file is in the part file.
    pub(crate) fn is_complete(&self) -> bool {
        self.pieces.iter().all(|p| p.written >= p.end)
    }

    /// True when a piece being fetched has enough left to give half to another connection.
    pub(crate) fn stealable(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| p.owner.is_some() && p.left() >= 2 * STEAL_FLOOR)
    }

    /// Pieces still without a connection and with bytes left.
    pub(crate) fn unclaimed(&self) -> usize {
        self.pieces.iter().filter(|p| p.owner.is_none() && p.left() > 0).count()
    }

    /// Bytes in the part file.
    pub(crate) fn done_bytes(&self) -> u64 {
        self.total - self.missing().iter().map(|(a, b)| b - a).sum::<u64>()
    }

    /// The ranges not yet in the part file (sorted, merged, ends exclusive).
    pub(crate) fn missing(&self) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = self
            .pieces
            .iter()
            .filter(|p| p.written < p.end)
            .map(|p| (p.written, p.end))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (from, to) in ranges {
            match merged.last_mut() {
                Some(last) if last.1 >= from => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        merged
    }
}

fn aligned(offset: u64) -> u64 {
    offset - offset % ALIGN
}

/// The archive's form of missing ranges: `from-to,from-to` (ends exclusive).
pub(crate) fn format_ranges(ranges: &[(u64, u64)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses [`format_ranges`]' form; `None` unless the ranges are sorted, disjoint, non-empty
/// and inside `total` bytes (anything else is not trusted: the file is fetched whole).
pub(crate) fn parse_ranges(text: &str, total: u64) -> Option<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut last_end = 0;
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-')?;
        let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
        if a >= b || b > total || (a < last_end && !ranges.is_empty()) {
            return None;
        }
        last_end = b;
        ranges.push((a, b));
    }
    Some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    #[test]
    fn connections_at_most_split_none_below_the_minimum() {
        assert_eq!(Plan::pieces_for(100 * MB, 4, 16 * MB), 4);
        assert_eq!(Plan::pieces_for(40 * MB, 4, 16 * MB), 2);
        assert_eq!(Plan::pieces_for(20 * MB, 4, 16 * MB), 1);
        assert_eq!(Plan::pieces_for(100 * MB, 1, 16 * MB), 1);
    }

    #[test]
    fn thieves_take_the_back_half_of_the_largest_piece() {
        let mut plan = Plan::new(64 * MB);
        let a = plan.claim(1).unwrap();
        assert_eq!((a.from, a.to), (0, 64 * MB), "the first request has the whole file");
        assert_eq!(plan.receive(a.piece, 1, 4 * MB), 4 * MB);
        let b = plan.claim(2).unwrap();
        assert_eq!((b.from, b.to), (34 * MB, 64 * MB), "the back half of what is left");
        let c = plan.claim(3).unwrap();
        assert_eq!((c.from, c.to), (49 * MB, 64 * MB), "then the largest piece again");
        assert_eq!(plan.steals, 2);
        // The first connection keeps only up to its new end.
        assert_eq!(plan.receive(a.piece, 1, 40 * MB), 30 * MB);
        assert!(plan.is_received(a.piece));
        plan.written(a.piece, 34 * MB);
        plan.release(a.piece, 1);
        // A connection that finished steals from the one with the most left.
        assert_eq!(plan.receive(c.piece, 3, 5 * MB), 5 * MB);
        let d = plan.claim(1).unwrap();
        let half = 34 * MB + 15 * MB / 2;
        assert_eq!((d.from, d.to), (half, 49 * MB), "b had 15 MiB left, c 10 MiB");
        assert_eq!(plan.receive(b.piece, 2, 64 * MB), half - 34 * MB);
        plan.written(b.piece, half);
        assert_eq!(plan.receive(c.piece, 3, 64 * MB), 10 * MB);
        plan.written(c.piece, 64 * MB);
        assert_eq!(plan.missing(), vec![(half, 49 * MB)]);
        assert_eq!(plan.receive(d.piece, 1, 64 * MB), 49 * MB - half);
        plan.written(d.piece, 49 * MB);
        assert!(plan.is_complete());
        assert_eq!(plan.done_bytes(), 64 * MB);
        assert_eq!(plan.missing(), vec![]);
    }

    #[test]
    fn no_piece_cut_below_the_floor() {
        let mut plan = Plan::new(4 * STEAL_FLOOR);
        let a = plan.claim(1).unwrap();
        assert!(plan.stealable());
        let b = plan.claim(2).unwrap();
        assert_eq!((b.from, b.to), (2 * STEAL_FLOOR, 4 * STEAL_FLOOR));
        plan.receive(a.piece, 1, 1);
        plan.receive(b.piece, 2, 1);
        assert!(!plan.stealable(), "under twice the floor left in each");
        assert_eq!(plan.claim(3), None);
    }

    #[test]
    fn a_released_piece_goes_back_from_what_was_written() {
        let mut plan = Plan::new(10 * MB);
        let a = plan.claim(1).unwrap();
        plan.receive(a.piece, 1, 5 * MB);
        plan.written(a.piece, 4 * MB);
        plan.release(a.piece, 1);
        assert_eq!(plan.missing(), vec![(4 * MB, 10 * MB)]);
        let again = plan.claim(2).unwrap();
        assert_eq!((again.from, again.to), (4 * MB, 10 * MB));
        assert_eq!(plan.receive(a.piece, 1, 1), 0, "the old connection's bytes are refused");
    }

    #[test]
    fn the_written_prefix_ends_at_the_first_gap() {
        let mut plan = Plan::new(10 * MB);
        let a = plan.claim(1).unwrap();
        let b = plan.claim(2).unwrap();
        assert_eq!(plan.written_prefix(), 0);
        // The thief writes its half first: no prefix yet.
        plan.receive(b.piece, 2, 2 * MB);
        plan.written(b.piece, b.from + 2 * MB);
        assert_eq!(plan.written_prefix(), 0);
        plan.receive(a.piece, 1, 3 * MB);
        plan.written(a.piece, 3 * MB);
        assert_eq!(plan.written_prefix(), 3 * MB);
        // The first piece done: the prefix runs on into the thief's written bytes.
        plan.receive(a.piece, 1, b.from);
        plan.written(a.piece, b.from);
        assert_eq!(plan.written_prefix(), b.from + 2 * MB);
        plan.receive(b.piece, 2, 10 * MB);
        plan.written(b.piece, 10 * MB);
        assert_eq!(plan.written_prefix(), 10 * MB);
        assert_eq!(Plan::resume(10 * MB, &[(4 * MB, 6 * MB)]).written_prefix(), 4 * MB);
    }

    #[test]
    fn resume_plans_only_the_missing_ranges() {
        let missing = [(10 * MB, 30 * MB), (50 * MB, 51 * MB)];
        let mut plan = Plan::resume(64 * MB, &missing);
        assert_eq!(plan.missing(), missing.to_vec());
        assert_eq!(plan.done_bytes(), 43 * MB);
        for conn in 0..6 {
            let c = plan.claim(conn).unwrap();
            assert!(missing.iter().any(|&(a, b)| c.from >= a && c.to <= b), "{c:?}");
        }
        assert_eq!(plan.steals, 4, "two ranges, then halves of the largest");
    }

    #[test]
    fn ranges_round_trip_and_bad_ones_are_refused() {
        let r = vec![(0, 5), (9, 20)];
        assert_eq!(parse_ranges(&format_ranges(&r), 20), Some(r));
        assert_eq!(parse_ranges("", 20), Some(vec![]));
        assert_eq!(parse_ranges("5-3", 20), None);
        assert_eq!(parse_ranges("0-30", 20), None);
        assert_eq!(parse_ranges("5-9,0-3", 20), None);
        assert_eq!(parse_ranges("x", 20), None);
    }
}
