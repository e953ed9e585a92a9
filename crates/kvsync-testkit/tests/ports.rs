//! A server counts as started only once it listens itself: a port someone else holds
//! (as can happen to a "free" port between choosing and binding it) is not mistaken
//! for the server being up.

use kvsync_testkit::{listens_on, Mongo, Tools};

#[tokio::test]
async fn a_port_held_by_another_process_is_not_taken_for_our_server() {
    let tools = Tools::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = squatter.local_addr().unwrap().port();
    assert!(listens_on(std::process::id(), port));

    let taken = Mongo::start(&tools, &dir.path().join("taken"), port).await;
    assert!(taken.is_err(), "started on a port it could not bind");

    // On a free port (0) it comes up, elsewhere than the squatter.
    let mongo = Mongo::start(&tools, &dir.path().join("free"), 0)
        .await
        .unwrap();
    assert_ne!(mongo.port, port);
    drop(squatter);
    assert!(!listens_on(std::process::id(), port));
}
