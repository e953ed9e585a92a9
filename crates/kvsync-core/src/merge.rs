//! What applying a peer's event did.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event brought something new: the stored state changed.
    Applied,
    /// The replica already held everything the event carries.
    Stale,
}
