use proptest::prelude::*;

use super::*;
use crate::pair::ValuesError;
use crate::{clock::Clock, clock::Timestamp, node_id::NodeId};

/// A node in a simulated cluster: its clock and its replica of one key.
#[derive(Clone)]
struct Node {
    id: NodeId,
    clock: Clock,
    state: PairState,
    now: u64,
}

impl Node {
    fn new(name: &str) -> Self {
        Self {
            id: NodeId::parse(name).unwrap(),
            clock: Clock::new(),
            state: PairState::default(),
            now: 1_000,
        }
    }

    fn stamp(&mut self) -> Version {
        if let Some(v) = self.state.version() {
            self.clock.observe(v.ts);
        }
        self.now += 1;
        Version::new(self.clock.tick(self.now), self.id.clone())
    }

    fn append(&mut self, v: &str) -> ElemId {
        let at = self.stamp();
        self.state.append(v.into(), &at, 1).unwrap()
    }

    fn put(&mut self, values: &[&str]) {
        let at = self.stamp();
        let values = values.iter().map(|s| s.to_string()).collect();
        self.state.replace(values, &at, 1).unwrap();
    }

    fn edit(&mut self, id: &ElemId, v: &str) {
        let at = self.stamp();
        self.state.edit(id, v.into(), &at, 1).unwrap();
    }

    fn remove(&mut self, id: &ElemId) {
        let at = self.stamp();
        self.state.remove(id, &at).unwrap();
    }

    fn delete(&mut self) {
        let at = self.stamp();
        self.state.delete(&at);
    }

    fn receive(&mut self, from: &PairState) -> Vec<Conflict> {
        self.state.merge(from).1
    }

    fn values(&self) -> Vec<String> {
        self.state.values()
    }

    fn id_of(&self, value: &str) -> ElemId {
        self.state
            .items()
            .find(|i| i.value == value)
            .map(|i| i.id.clone())
            .unwrap()
    }
}

/// Two nodes that share `setup`'s state, then write concurrently, then exchange.
fn race(
    setup: impl Fn(&mut Node),
    on_a: impl Fn(&mut Node),
    on_b: impl Fn(&mut Node),
) -> (Node, Node, Vec<Conflict>, Vec<Conflict>) {
    let mut a = Node::new("a");
    setup(&mut a);
    let mut b = Node::new("b");
    b.state = a.state.clone();
    b.now = a.now;
    on_a(&mut a);
    on_b(&mut b);
    let (sa, sb) = (a.state.clone(), b.state.clone());
    let ca = a.receive(&sb);
    let cb = b.receive(&sa);
    assert_eq!(a.state, b.state, "replicas differ after exchange");
    (a, b, ca, cb)
}

fn kinds(c: &[Conflict]) -> Vec<ConflictKind> {
    c.iter().map(|c| c.kind.clone()).collect()
}

#[test]
fn append_append_keeps_both_in_one_order() {
    let (a, _, ca, cb) = race(
        |n| n.put(&["x"]),
        |a| drop(a.append("A")),
        |b| drop(b.append("B")),
    );
    assert_eq!(a.values(), ["x", "A", "B"]);
    assert!(ca.is_empty() && cb.is_empty());
}

#[test]
fn append_and_edit_of_another_value_both_stay() {
    let (a, _, ca, _) = race(
        |n| n.put(&["x", "y"]),
        |a| drop(a.append("new")),
        |b| {
            let y = b.id_of("y");
            b.edit(&y, "y2")
        },
    );
    assert_eq!(a.values(), ["x", "y2", "new"]);
    assert!(ca.is_empty());
}

#[test]
fn append_and_remove_of_another_value_both_apply() {
    let (a, ..) = race(
        |n| n.put(&["x", "y"]),
        |a| drop(a.append("new")),
        |b| {
            let x = b.id_of("x");
            b.remove(&x)
        },
    );
    assert_eq!(a.values(), ["y", "new"]);
}

#[test]
fn edit_edit_one_wins_and_the_other_is_a_conflict_on_both() {
    let (a, _, ca, cb) = race(
        |n| n.put(&["x"]),
        |a| {
            let x = a.id_of("x");
            a.edit(&x, "from a")
        },
        |b| {
            let x = b.id_of("x");
            b.edit(&x, "from b")
        },
    );
    // b stamps after a (same clock start, b's node id is greater on a tie).
    assert_eq!(a.values(), ["from b"]);
    for c in [&ca, &cb] {
        assert_eq!(kinds(c), [ConflictKind::Edit]);
        assert_eq!(c[0].lost, ["from a"]);
        assert_eq!(c[0].won.as_deref(), Some("from b"));
        assert_eq!(c[0].lost_version.node.as_str(), "a");
    }
}

#[test]
fn sequential_edits_are_not_conflicts() {
    let mut a = Node::new("a");
    a.put(&["x"]);
    let mut b = Node::new("b");
    assert!(b.receive(&a.state).is_empty());
    let x = b.id_of("x");
    b.edit(&x, "x1");
    assert!(a.receive(&b.state).is_empty());
    a.edit(&x, "x2");
    // b missed nothing: a had seen x1.
    assert!(b.receive(&a.state).is_empty());
    assert_eq!(b.values(), ["x2"]);
}

#[test]
fn edit_beats_a_concurrent_remove() {
    let (a, _, ca, cb) = race(
        |n| n.put(&["x", "y"]),
        |a| {
            let x = a.id_of("x");
            a.edit(&x, "kept")
        },
        |b| {
            let x = b.id_of("x");
            b.remove(&x)
        },
    );
    assert_eq!(a.values(), ["kept", "y"]);
    assert_eq!(kinds(&ca), [ConflictKind::Remove]);
    assert_eq!(kinds(&cb), [ConflictKind::Remove]);
}

#[test]
fn put_put_one_list_wins_whole() {
    let (a, _, ca, cb) = race(
        |n| n.put(&["old"]),
        |a| a.put(&["a1", "a2"]),
        |b| b.put(&["b1", "b2", "b3"]),
    );
    assert_eq!(a.values(), ["b1", "b2", "b3"]);
    for c in [&ca, &cb] {
        assert_eq!(kinds(c), [ConflictKind::Replace]);
        assert_eq!(c[0].lost, ["a1", "a2"]);
    }
}

#[test]
fn put_and_append_keep_the_append_after_the_list() {
    let (a, _, ca, _) = race(
        |n| n.put(&["old"]),
        |a| a.put(&["p1", "p2"]),
        |b| drop(b.append("tail")),
    );
    assert_eq!(a.values(), ["p1", "p2", "tail"]);
    assert!(ca.is_empty());
}

#[test]
fn delete_and_append_keep_the_appended_value_only() {
    let (a, _, ca, _) = race(
        |n| n.put(&["x", "y"]),
        |a| a.delete(),
        |b| drop(b.append("z")),
    );
    assert!(a.state.is_live());
    assert_eq!(a.values(), ["z"]);
    assert!(ca.is_empty());
}

#[test]
fn delete_and_put_keep_the_written_values() {
    let (a, _, ca, cb) = race(|n| n.put(&["x"]), |a| a.delete(), |b| b.put(&["p"]));
    assert!(a.state.is_live());
    assert_eq!(a.values(), ["p"]);
    assert_eq!(kinds(&ca), [ConflictKind::Delete]);
    assert_eq!(kinds(&cb), [ConflictKind::Delete]);
}

#[test]
fn delete_and_edit_keep_the_edited_value() {
    let (a, _, ca, _) = race(
        |n| n.put(&["x", "y"]),
        |a| a.delete(),
        |b| {
            let y = b.id_of("y");
            b.edit(&y, "y!")
        },
    );
    assert_eq!(a.values(), ["y!"]);
    assert_eq!(kinds(&ca), [ConflictKind::Remove]);
}

#[test]
fn sequential_meanings_are_kept() {
    let mut a = Node::new("a");
    a.put(&["x", "y"]);
    let x = a.id_of("x");
    a.edit(&x, "x2");
    assert_eq!(a.values(), ["x2", "y"]);
    a.put(&["only"]);
    assert_eq!(a.values(), ["only"]);
    a.delete();
    assert!(!a.state.is_live());
    a.put(&[]);
    assert!(a.state.is_live());
    assert!(a.values().is_empty());
    a.append("v");
    let v = a.id_of("v");
    a.remove(&v);
    assert!(a.state.is_live(), "removing the last value keeps the key");
    // A late copy of an old state changes nothing.
    let mut old = Node::new("a");
    old.put(&["x", "y"]);
    assert!(!a.state.merge(&old.state).0 || a.values().is_empty());
    assert!(a.values().is_empty());
}

#[test]
fn whole_states_from_the_old_format_merge_like_puts() {
    let v = |ms| Version::new(Timestamp::new(ms, 0), NodeId::parse("n").unwrap());
    let put = PairState::whole(Some(vec!["a".into(), "b".into()]), &v(5));
    assert_eq!(put.values(), ["a", "b"]);
    assert_eq!(put.version(), Some(&v(5)));
    let del = PairState::whole(None, &v(6));
    assert!(!del.is_live());
    let mut s = put.clone();
    s.merge(&del);
    // An old-format delete saw nothing: the list it did not know of stays, with a conflict.
    assert!(s.is_live());
}

#[test]
fn tombstones_are_collected_and_stay_dead() {
    let mut a = Node::new("a");
    let x = a.append("x");
    let early = a.state.clone();
    a.remove(&x);
    a.append("y");
    assert_eq!(a.state.tombstone_count(), 1);
    a.state
        .collect(a.now + TOMBSTONE_HORIZON_MS + 10, TOMBSTONE_HORIZON_MS);
    assert_eq!(a.state.tombstone_count(), 0);
    // The early state still holds x alive: merging it in must not revive x.
    let (changed, _) = a.state.merge(&early);
    assert!(!changed);
    assert_eq!(a.values(), ["y"]);
    // And a peer holding the tombstone converges to the collected state.
    let mut b = Node::new("b");
    b.receive(&early);
    b.remove(&x);
    b.receive(&a.state);
    assert_eq!(b.state.values(), ["y"]);
    assert_eq!(b.state.tombstone_count(), 0);
}

#[test]
fn tombstones_are_bounded_by_count() {
    let mut a = Node::new("a");
    for i in 0..(MAX_TOMBSTONES + 50) {
        let id = a.append(&i.to_string());
        a.remove(&id);
    }
    a.append("live");
    a.state.collect(a.now, TOMBSTONE_HORIZON_MS);
    assert_eq!(a.state.tombstone_count(), MAX_TOMBSTONES);
    assert_eq!(a.values(), ["live"]);
}

#[test]
fn the_oldest_tombstones_go_first_and_stay_dead() {
    let mut a = Node::new("a");
    let ids: Vec<_> = (0..5).map(|i| a.append(&i.to_string())).collect();
    let early = a.state.clone();
    for id in &ids[..4] {
        a.remove(id);
    }
    assert_eq!(a.state.tombstone_count(), 4);
    assert_eq!(a.state.collect_oldest(3), 3);
    assert_eq!(a.state.tombstone_count(), 1);
    assert_eq!(a.values(), ["4"]);
    assert_eq!(a.state.collect_oldest(10), 1, "as many as there are");
    // A state from before the removals does not bring the collected values back, and a
    // peer that held them converges to the collected state.
    let (changed, _) = a.state.merge(&early);
    assert!(!changed);
    let mut b = Node::new("b");
    b.receive(&early);
    b.receive(&a.state);
    assert_eq!(b.values(), ["4"]);
    assert_eq!(b.state, a.state);
}

#[test]
fn local_limits() {
    let mut a = Node::new("a");
    let at = a.stamp();
    assert!(matches!(
        a.state.append("x".repeat(MAX_VALUE_BYTES + 1), &at, 1),
        Err(StateError::Limits(ValuesError::ValueTooLarge { .. }))
    ));
    assert!(a.state.is_empty(), "a refused write changes nothing");
    let missing = ElemId {
        ver: at.clone(),
        n: 3,
    };
    assert!(matches!(
        a.state.edit(&missing, "v".into(), &at, 1),
        Err(StateError::NoSuchElement(_))
    ));
}

#[test]
fn elem_id_text() {
    let id = ElemId {
        ver: "0000019361a2b3c4-00000003-node.1".parse().unwrap(),
        n: 12,
    };
    assert_eq!(id.to_string(), "0000019361a2b3c4-00000003-node.1.12");
    assert_eq!(id.to_string().parse::<ElemId>().unwrap(), id);
    for bad in [
        "",
        "x.1",
        "0000019361a2b3c4-00000003-n.",
        "0000019361a2b3c4-00000003-n.01",
    ] {
        assert!(bad.parse::<ElemId>().is_err(), "{bad}");
    }
}

#[test]
fn wire_round_trip_and_validation() {
    let mut a = Node::new("a");
    a.put(&["x", "y"]);
    let y = a.id_of("y");
    a.remove(&y);
    a.append("z");
    let json = serde_json::to_string(&a.state.to_wire()).unwrap();
    let back = PairState::from_wire(serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(back, a.state);
    // A removed element carrying text is refused: states must be normalized.
    let mut wire = a.state.to_wire();
    wire.els.iter_mut().for_each(|e| e.value = Some("t".into()));
    assert!(matches!(
        PairState::from_wire(wire),
        Err(WireError::Text(_))
    ));
    let mut wire = a.state.to_wire();
    wire.els.reverse();
    assert!(matches!(
        PairState::from_wire(wire),
        Err(WireError::Order(_))
    ));
}

#[derive(Debug, Clone)]
enum Step {
    Append(usize),
    Put(usize, usize),
    Edit(usize, usize),
    Remove(usize, usize),
    Delete(usize),
    Collect(usize),
    /// Node `to` receives the `pick`-th message sent so far (again, perhaps).
    Deliver(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..5).prop_map(Step::Append),
        1 => (0usize..5, 0usize..3).prop_map(|(n, k)| Step::Put(n, k)),
        2 => (0usize..5, any::<usize>()).prop_map(|(n, i)| Step::Edit(n, i)),
        2 => (0usize..5, any::<usize>()).prop_map(|(n, i)| Step::Remove(n, i)),
        1 => (0usize..5).prop_map(Step::Delete),
        1 => (0usize..5).prop_map(Step::Collect),
        6 => (0usize..5, any::<usize>()).prop_map(|(n, i)| Step::Deliver(n, i)),
    ]
}

fn run(nodes: usize, steps: &[Step]) -> (Vec<Node>, Vec<PairState>) {
    let mut cluster: Vec<Node> = (0..nodes).map(|i| Node::new(&format!("n{i}"))).collect();
    let mut sent: Vec<PairState> = Vec::new();
    let mut counter = 0;
    for s in steps {
        let mut text = || {
            counter += 1;
            format!("v{counter}")
        };
        let pick = |n: &Node, i: usize| {
            let ids: Vec<ElemId> = n.state.items().map(|it| it.id.clone()).collect();
            (!ids.is_empty()).then(|| ids[i % ids.len()].clone())
        };
        let n = match s {
            Step::Append(n)
            | Step::Put(n, _)
            | Step::Edit(n, _)
            | Step::Remove(n, _)
            | Step::Delete(n)
            | Step::Collect(n)
            | Step::Deliver(n, _) => n % nodes,
        };
        let node = &mut cluster[n];
        match s {
            Step::Append(_) => drop(node.append(&text())),
            Step::Put(_, k) => {
                let values: Vec<String> = (0..*k).map(|_| text()).collect();
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                node.put(&values);
            }
            Step::Edit(_, i) => {
                if let Some(id) = pick(node, *i) {
                    node.edit(&id, &text());
                }
            }
            Step::Remove(_, i) => {
                if let Some(id) = pick(node, *i) {
                    node.remove(&id);
                }
            }
            Step::Delete(_) => node.delete(),
            Step::Collect(_) => {
                // A horizon short enough to collect in a test run.
                node.state.collect(node.now, 3);
            }
            Step::Deliver(_, i) => {
                if !sent.is_empty() {
                    let msg = sent[i % sent.len()].clone();
                    node.receive(&msg);
                }
                continue;
            }
        }
        sent.push(cluster[n].state.clone());
    }
    (cluster, sent)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Replicas that have received the same writes hold the same state, whatever the
    /// order and the duplicates: every node receives every message at the end, in its
    /// own order, after whatever it received during the run.
    #[test]
    fn replicas_converge(
        nodes in 3usize..=5,
        steps in prop::collection::vec(step(), 1..60),
        shuffle in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let (mut cluster, sent) = run(nodes, &steps);
        for (k, node) in cluster.iter_mut().enumerate() {
            let mut order: Vec<&PairState> = sent.iter().collect();
            for (j, ix) in shuffle.iter().enumerate() {
                let len = order.len();
                if len == 0 {
                    break;
                }
                order.swap((j + k) % len, ix.index(len));
            }
            for msg in order {
                node.receive(msg);
            }
        }
        for node in &cluster[1..] {
            prop_assert_eq!(&node.state, &cluster[0].state);
            prop_assert_eq!(node.values(), cluster[0].values());
        }
    }

    /// The join is commutative, associative and idempotent on states that occur.
    #[test]
    fn join_is_a_semilattice(
        steps in prop::collection::vec(step(), 1..50),
        picks in (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<prop::sample::Index>()),
    ) {
        let (_, sent) = run(3, &steps);
        prop_assume!(!sent.is_empty());
        let (a, b, c) = (picks.0.get(&sent), picks.1.get(&sent), picks.2.get(&sent));
        prop_assert_eq!(join(a, b), join(b, a));
        prop_assert_eq!(join(&join(a, b), c), join(a, &join(b, c)));
        prop_assert_eq!(join(a, a), a.clone());
        // Conflicts are seen alike from either side.
        let (ab, ba) = (join(a, b), join(b, a));
        let mut x = conflicts(a, b, &ab);
        let mut y = conflicts(b, a, &ba);
        x.sort_by_key(|c| format!("{c:?}"));
        y.sort_by_key(|c| format!("{c:?}"));
        prop_assert_eq!(x, y);
    }

    /// No appended value is lost unless some write removed or replaced it: with appends
    /// only, every value ends up on every node.
    #[test]
    fn concurrent_appends_lose_nothing(
        writes in prop::collection::vec((0usize..4, any::<bool>()), 1..40),
    ) {
        let mut cluster: Vec<Node> = (0..4).map(|i| Node::new(&format!("n{i}"))).collect();
        let mut all = Vec::new();
        for (i, (n, sync)) in writes.iter().enumerate() {
            let v = format!("v{i}");
            cluster[*n].append(&v);
            all.push(v);
            if *sync {
                let s = cluster[*n].state.clone();
                cluster[(n + 1) % 4].receive(&s);
            }
        }
        let states: Vec<PairState> = cluster.iter().map(|n| n.state.clone()).collect();
        for node in &mut cluster {
            for s in &states {
                node.receive(s);
            }
        }
        let mut got = cluster[0].values();
        got.sort();
        all.sort();
        prop_assert_eq!(got, all);
    }

    #[test]
    fn wire_round_trips(steps in prop::collection::vec(step(), 1..40)) {
        let (cluster, _) = run(3, &steps);
        for n in cluster {
            let json = serde_json::to_vec(&n.state.to_wire()).unwrap();
            let back = PairState::from_wire(serde_json::from_slice(&json).unwrap()).unwrap();
            prop_assert_eq!(back, n.state);
        }
    }
}
