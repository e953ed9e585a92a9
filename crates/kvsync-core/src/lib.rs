//! The domain of kvsync, free of IO: what a pair is, how changes are versioned and
//! ordered, when a replica applies a change, and how changes travel as events.
//!
//! Everything here is deterministic given its inputs (the physical clock is passed in),
//! which is what lets the property tests check convergence exhaustively.

pub mod clock;
pub mod cluster;
pub mod digest;
pub mod etag;
pub mod event;
pub mod feed;
pub mod index;
pub mod key;
pub mod keymatch;
pub mod merge;
pub mod node_id;
pub mod pair;
pub mod position;
pub mod skew;
pub mod state;
pub mod version;

pub use clock::{Clock, Timestamp};
pub use digest::Digest;
pub use etag::{EntityTag, EntityTagError};
pub use event::{Event, EventError, Op};
pub use key::{Key, KeyError};
pub use keymatch::{folder_of, KeyMatch};
pub use merge::Outcome;
pub use node_id::{NodeId, NodeIdError};
pub use pair::{Values, ValuesError};
pub use skew::{Admission, Heartbeat, OwnClock};
pub use state::{Conflict, ConflictKind, ElemId, PairState, StateError};
pub use version::{Version, VersionError};
