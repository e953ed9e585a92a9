//! Where the consumer starts reading a partition it takes, and when what it finds there
//! means the node must get its peers' state instead (a join).
//!
//! The broker's committed offsets are the usual answer, but they are not kept forever:
//! Kafka drops a group's offsets after `offsets.retention.minutes` (7 days by default)
//! without a commit, and a quiet partition or a node away that long loses them. So the
//! node also saves its positions in its own database, beside the data they describe, and
//! falls back on those. A node holding data with neither cannot tell what it missed.

use std::fmt;

/// What is known of one partition when it is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionFacts {
    /// The first offset the topic still holds, and the one after its last record.
    pub low: i64,
    pub high: i64,
    /// Where this process settled the partition before (a rebuilt consumer).
    pub settled: Option<i64>,
    /// The offset committed under the node's group.
    pub committed: Option<i64>,
    /// The position the node saved in its own database.
    pub saved: Option<i64>,
}

/// The node as the consumer starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartContext {
    /// The first consumer of this process (later ones follow `settled`).
    pub first: bool,
    /// The node starts empty and wants its peers' state rather than the history.
    pub empty: bool,
    /// The database holds pairs (or cannot tell).
    pub has_data: bool,
    /// Asked to replay the topic from its beginning.
    from_low_wanted: bool,
}

impl StartContext {
    pub fn new(first: bool, empty: bool, has_data: bool) -> Self {
        Self {
            first,
            empty,
            has_data,
            from_low_wanted: false,
        }
    }

    /// Every partition starts at the beginning of what the topic holds.
    pub fn replaying(mut self) -> Self {
        self.from_low_wanted = true;
        self
    }
}

/// Why a node must get its peers' state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinReason {
    /// A new member: its peers' state brings it up to date faster than the history.
    NewMember { partition: i32 },
    /// Events it needs are gone from the topic (retention).
    EventsGone { partition: i32, from: i64, to: i64 },
    /// The database was emptied under positions that say nothing of it.
    EmptyDatabase,
}

impl JoinReason {
    /// Whether replaying the topic is as good, when no peer can send its state: only
    /// when no event it needs is gone.
    pub fn can_replay(&self) -> bool {
        !matches!(self, JoinReason::EventsGone { .. })
    }
}

impl fmt::Display for JoinReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinReason::NewMember { partition } => write!(f, "partition {partition}: a new member"),
            JoinReason::EventsGone {
                partition,
                from,
                to,
            } => write!(
                f,
                "partition {partition}: events {from}..{to} are gone from the topic"
            ),
            JoinReason::EmptyDatabase => f.write_str("the database is empty"),
        }
    }
}

/// Where partition `partition` starts, and why the node must join, if it must.
pub fn start_of(ctx: StartContext, partition: i32, p: PartitionFacts) -> (i64, Option<JoinReason>) {
    let at = match (p.settled, p.committed.or(p.saved)) {
        _ if ctx.from_low_wanted => p.low,
        (Some(at), _) if !ctx.first => at,
        (_, Some(at)) => at,
        // Nothing known and nothing stored: a new member.
        _ if ctx.first && ctx.empty && p.high > p.low => {
            return (p.high, Some(JoinReason::NewMember { partition }));
        }
        // Data but no position at all (lost on the broker, never saved): whatever the
        // topic no longer holds may be missing.
        _ if ctx.first && ctx.has_data && p.low > 0 => 0,
        _ => p.low,
    };
    if at < p.low {
        let gone = JoinReason::EventsGone {
            partition,
            from: at,
            to: p.low,
        };
        return (p.low, Some(gone));
    }
    (at, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Start = (i64, Option<JoinReason>);

    fn facts(low: i64, high: i64) -> PartitionFacts {
        PartitionFacts {
            low,
            high,
            ..Default::default()
        }
    }

    #[test]
    fn where_a_partition_starts() {
        let first = StartContext::new(true, false, true);
        let first_empty = StartContext::new(true, true, false);
        let later = StartContext::new(false, false, true);
        let first_no_data = StartContext::new(true, false, false);
        let gone = |from, to| {
            Some(JoinReason::EventsGone {
                partition: 0,
                from,
                to,
            })
        };
        let committed = |at| PartitionFacts {
            committed: Some(at),
            ..facts(10, 50)
        };
        let saved = |at| PartitionFacts {
            saved: Some(at),
            ..facts(10, 50)
        };
        let cases: Vec<(&str, StartContext, PartitionFacts, Start)> = vec![
            ("committed offset", first, committed(20), (20, None)),
            (
                "committed before the low mark",
                first,
                committed(5),
                (10, gone(5, 10)),
            ),
            (
                "committed offsets expired: the saved position",
                first,
                saved(30),
                (30, None),
            ),
            (
                "saved position before the low mark",
                first,
                saved(3),
                (10, gone(3, 10)),
            ),
            (
                "committed wins over saved",
                first,
                PartitionFacts {
                    saved: Some(15),
                    ..committed(40)
                },
                (40, None),
            ),
            (
                "a later consumer follows what this process settled",
                later,
                PartitionFacts {
                    settled: Some(45),
                    ..committed(20)
                },
                (45, None),
            ),
            (
                "the first consumer does not",
                first,
                PartitionFacts {
                    settled: Some(45),
                    ..committed(20)
                },
                (20, None),
            ),
            (
                "a new member starts at the end and joins",
                first_empty,
                facts(10, 50),
                (50, Some(JoinReason::NewMember { partition: 0 })),
            ),
            (
                "a new member of an empty topic",
                first_empty,
                facts(0, 0),
                (0, None),
            ),
            (
                "data and no position, nothing deleted",
                first,
                facts(0, 50),
                (0, None),
            ),
            (
                "data and no position, history deleted",
                first,
                facts(10, 50),
                (10, gone(0, 10)),
            ),
            ("replaying", first.replaying(), committed(40), (10, None)),
            (
                "no data and no wish to join: what the topic holds",
                first_no_data,
                facts(10, 50),
                (10, None),
            ),
        ];
        for (what, ctx, p, want) in cases {
            assert_eq!(start_of(ctx, 0, p), want, "{what}");
        }
    }

    #[test]
    fn only_missing_events_forbid_a_replay() {
        assert!(JoinReason::NewMember { partition: 1 }.can_replay());
        assert!(JoinReason::EmptyDatabase.can_replay());
        let gone = JoinReason::EventsGone {
            partition: 2,
            from: 0,
            to: 9,
        };
        assert!(!gone.can_replay());
        assert_eq!(
            gone.to_string(),
            "partition 2: events 0..9 are gone from the topic"
        );
    }
}
