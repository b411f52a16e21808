//! End-to-end tests of the speaker on loopback: speakers peering with each other, and a
//! scripted peer that speaks raw BGP to check what goes on the wire. Each test uses its own
//! 127.0.N.0/24 addresses (all on `lo`, no root needed) so a speaker can tell its peers
//! apart by address; nothing leaves the machine, and every wait is bounded.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{timeout, Instant},
};

use super::{
    error::{code, subcode},
    message::{Capability, DecodeContext, Message, Notification, Open, AS_TRANS, HEADER_LEN},
    update::{AsSegment, Origin, PathAttributes, SegmentKind, Update},
    Ipv4Prefix, PeerConfig, RouteEvent, Speaker, SpeakerConfig,
};

const WAIT: Duration = Duration::from_secs(20);
const FOUR: DecodeContext = DecodeContext {
    four_octet_as: true,
};

/// Logs to the test output when `RUST_LOG` asks for it.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn prefix(s: &str) -> Ipv4Prefix {
    s.parse().expect("prefix")
}

fn config(router_id: Ipv4Addr, listen_port: u16) -> SpeakerConfig {
    init_logs();
    SpeakerConfig {
        listen: SocketAddr::new(IpAddr::V4(router_id), listen_port),
        hold_time: 3,
        connect_retry: Duration::from_millis(200),
        connect_retry_max: Duration::from_secs(1),
        ..SpeakerConfig::new(router_id)
    }
}

async fn listener(address: Ipv4Addr) -> TcpListener {
    TcpListener::bind((address, 0))
        .await
        .expect("bind on loopback")
}

fn port(listener: &TcpListener) -> u16 {
    listener.local_addr().expect("bound").port()
}

/// Collects route events into the routes each peer currently gives, until `done` holds.
async fn wait_for(
    events: &mut mpsc::Receiver<RouteEvent>,
    routes: &mut BTreeMap<(Ipv4Addr, Ipv4Prefix), Ipv4Addr>,
    what: &str,
    done: impl Fn(&BTreeMap<(Ipv4Addr, Ipv4Prefix), Ipv4Addr>) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(routes) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; routes: {routes:?}"))
            .unwrap_or_else(|| panic!("event channel closed waiting for {what}"));
        match event {
            RouteEvent::Learned {
                prefix,
                next_hop,
                peer,
            } => {
                routes.insert((peer, prefix), next_hop);
            }
            RouteEvent::Withdrawn { prefix, peer } => {
                routes.remove(&(peer, prefix));
            }
        }
    }
}

#[tokio::test]
async fn three_speakers_mesh_exchange_prefixes_and_withdraw_on_stop() {
    let addresses = [1u8, 2, 3].map(|i| Ipv4Addr::new(127, 0, 1, i));
    let mut listeners = Vec::new();
    for address in addresses {
        listeners.push(listener(address).await);
    }
    let ports: Vec<u16> = listeners.iter().map(port).collect();
    let mut speakers = Vec::new();
    let mut receivers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut config = config(addresses[i], ports[i]);
        config.prefixes = vec![prefix(&format!("10.42.{}.0/24", i + 1))];
        config.peers = (0..3)
            .filter(|&j| j != i)
            .map(|j| PeerConfig {
                address: addresses[j],
                remote_as: 64512,
                port: Some(ports[j]),
            })
            .collect();
        let (speaker, events) = Speaker::start_on(config, listener).expect("start");
        speakers.push(speaker);
        receivers.push(events);
    }
    let mut routes: Vec<BTreeMap<_, _>> = vec![BTreeMap::new(); 3];
    for i in 0..3 {
        wait_for(&mut receivers[i], &mut routes[i], "the mesh", |r| {
            r.len() == 2
        })
        .await;
        // Each node learned each other node's prefix with that node as next hop.
        for j in (0..3).filter(|&j| j != i) {
            let key = (addresses[j], prefix(&format!("10.42.{}.0/24", j + 1)));
            assert_eq!(
                routes[i].get(&key),
                Some(&addresses[j]),
                "speaker {i}: {routes:?}"
            );
        }
    }

    // A prefix added at run time reaches the others; one removed is withdrawn.
    speakers[0].set_prefixes([prefix("10.42.1.0/24"), prefix("10.42.9.0/24")]);
    let added = (addresses[0], prefix("10.42.9.0/24"));
    for i in 1..3 {
        wait_for(&mut receivers[i], &mut routes[i], "the added prefix", |r| {
            r.contains_key(&added)
        })
        .await;
    }
    speakers[0].set_prefixes([prefix("10.42.9.0/24")]);
    let removed = (addresses[0], prefix("10.42.1.0/24"));
    for i in 1..3 {
        wait_for(
            &mut receivers[i],
            &mut routes[i],
            "the removed prefix",
            |r| !r.contains_key(&removed),
        )
        .await;
        assert!(routes[i].contains_key(&added));
    }

    // Speaker 3 stops: the others withdraw its prefix, and it withdraws what it learned.
    let third = speakers.pop().expect("three speakers");
    third.shutdown().await;
    let gone = (addresses[2], prefix("10.42.3.0/24"));
    for i in 0..2 {
        wait_for(&mut receivers[i], &mut routes[i], "the withdrawal", |r| {
            !r.contains_key(&gone)
        })
        .await;
        assert_eq!(routes[i].len(), 1, "speaker {i}: {routes:?}");
    }
    wait_for(
        &mut receivers[2],
        &mut routes[2],
        "the stopped speaker's withdrawals",
        |r| r.is_empty(),
    )
    .await;
    for speaker in speakers {
        speaker.shutdown().await;
    }
}

/// A peer scripted by the test, on the other end of one TCP connection.
struct ScriptedPeer {
    stream: TcpStream,
}

impl ScriptedPeer {
    /// Accepts the speaker's connection on `listener`.
    async fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = timeout(WAIT, listener.accept())
            .await
            .expect("the speaker connects in time")
            .expect("accept");
        Self { stream }
    }

    async fn read(&mut self) -> Option<Message> {
        let mut header = [0u8; HEADER_LEN];
        match timeout(WAIT, self.stream.read_exact(&mut header)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return None,
            Err(_) => panic!("no message in time"),
        }
        let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
        let mut frame = header.to_vec();
        frame.resize(len.max(HEADER_LEN), 0);
        timeout(WAIT, self.stream.read_exact(&mut frame[HEADER_LEN..]))
            .await
            .expect("body in time")
            .ok()?;
        Some(Message::decode(&frame, FOUR).expect("the speaker sends valid messages"))
    }

    async fn write_raw(&mut self, wire: &[u8]) {
        self.stream.write_all(wire).await.expect("write");
    }

    async fn write(&mut self, message: Message) {
        let wire = message.encode(FOUR).expect("encode");
        self.write_raw(&wire).await;
    }

    /// Completes the OPEN exchange as `asn`/`router_id` with a 3 s hold time; returns the
    /// speaker's OPEN.
    async fn establish(&mut self, asn: u32, router_id: Ipv4Addr) -> Open {
        let Some(Message::Open(open)) = self.read().await else {
            panic!("expected the speaker's OPEN");
        };
        self.write(Message::Open(Open {
            asn,
            hold_time: 3,
            router_id,
            capabilities: vec![Capability::FourOctetAs(asn)],
        }))
        .await;
        self.write(Message::Keepalive).await;
        assert_eq!(self.read().await, Some(Message::Keepalive));
        open
    }

    /// Reads until a NOTIFICATION (skipping keepalives and updates) or the end.
    async fn notification(&mut self) -> Option<Notification> {
        for _ in 0..100 {
            match self.read().await? {
                Message::Notification(n) => return Some(n),
                _ => continue,
            }
        }
        None
    }
}

#[tokio::test]
async fn a_silent_peer_trips_the_hold_timer() {
    let us = Ipv4Addr::new(127, 0, 2, 1);
    let peer = Ipv4Addr::new(127, 0, 2, 2);
    let peer_listener = listener(peer).await;
    let mut config = config(us, 0);
    config.peers = vec![PeerConfig {
        address: peer,
        remote_as: 64512,
        port: Some(port(&peer_listener)),
    }];
    let (speaker, _events) = Speaker::start(config).await.expect("start");
    let mut scripted = ScriptedPeer::accept(&peer_listener).await;
    let open = scripted.establish(64512, peer).await;
    assert_eq!(open.hold_time, 3);
    assert_eq!(open.router_id, us);
    let silent_since = Instant::now();
    // Keepalives keep coming every second while we say nothing; after 3 s the speaker gives up.
    let mut keepalives = 0;
    let notification = loop {
        match scripted.read().await {
            Some(Message::Keepalive) => keepalives += 1,
            Some(Message::Notification(n)) => break n,
            other => panic!("unexpected {other:?}"),
        }
    };
    let silent_for = silent_since.elapsed();
    assert_eq!(
        (notification.code, notification.subcode),
        (code::HOLD_TIMER_EXPIRED, 0)
    );
    assert!(keepalives >= 1, "{keepalives} keepalives");
    assert!(
        silent_for >= Duration::from_millis(2500) && silent_for < Duration::from_secs(6),
        "{silent_for:?}"
    );
    assert_eq!(
        scripted.read().await,
        None,
        "the connection is closed after the NOTIFICATION"
    );
    speaker.shutdown().await;
}

#[tokio::test]
async fn a_malformed_update_gets_a_notification_and_withdraws_the_peers_routes() {
    let us = Ipv4Addr::new(127, 0, 3, 1);
    let peer = Ipv4Addr::new(127, 0, 3, 2);
    let peer_listener = listener(peer).await;
    let mut config = config(us, 0);
    config.prefixes = vec![prefix("10.42.1.0/24")];
    config.peers = vec![PeerConfig {
        address: peer,
        remote_as: 64512,
        port: Some(port(&peer_listener)),
    }];
    let (speaker, mut events) = Speaker::start(config).await.expect("start");
    let mut scripted = ScriptedPeer::accept(&peer_listener).await;
    scripted.establish(64512, peer).await;
    // Our prefix arrives with the iBGP attributes.
    let Some(Message::Update(update)) = scripted.read().await else {
        panic!("expected the speaker's UPDATE");
    };
    assert_eq!(update.nlri, [prefix("10.42.1.0/24")]);
    assert_eq!(update.attributes.next_hop, Some(us));
    assert_eq!(update.attributes.local_pref, Some(100));
    assert_eq!(update.attributes.as_path, Some(vec![]));
    assert_eq!(update.attributes.origin, Some(Origin::Igp));

    scripted
        .write(Message::Update(Update {
            attributes: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(vec![]),
                next_hop: Some(peer),
                local_pref: Some(100),
                ..PathAttributes::default()
            },
            nlri: vec![prefix("10.42.2.0/24")],
            ..Update::default()
        }))
        .await;
    let mut routes = BTreeMap::new();
    let key = (peer, prefix("10.42.2.0/24"));
    wait_for(&mut events, &mut routes, "the learned route", |r| {
        r.get(&key) == Some(&peer)
    })
    .await;

    // An UPDATE announcing a /33: Invalid Network Field, then the route is withdrawn.
    let mut wire = Message::Update(Update::default())
        .encode(FOUR)
        .expect("encode");
    wire.extend_from_slice(&[33, 10, 0, 0, 0, 0]);
    wire[17] += 6;
    scripted.write_raw(&wire).await;
    let notification = scripted.notification().await.expect("a NOTIFICATION");
    assert_eq!(
        (notification.code, notification.subcode),
        (code::UPDATE_MESSAGE, subcode::INVALID_NETWORK_FIELD)
    );
    wait_for(&mut events, &mut routes, "the withdrawal", |r| r.is_empty()).await;

    // The speaker comes back after its backoff, and a garbled header is refused as well.
    let mut scripted = ScriptedPeer::accept(&peer_listener).await;
    scripted.establish(64512, peer).await;
    let mut garbled = Message::Keepalive.encode(FOUR).expect("encode");
    garbled[0] = 0;
    scripted.write_raw(&garbled).await;
    let notification = scripted.notification().await.expect("a NOTIFICATION");
    assert_eq!(
        (notification.code, notification.subcode),
        (code::MESSAGE_HEADER, subcode::CONNECTION_NOT_SYNCHRONIZED)
    );
    speaker.shutdown().await;
}

#[tokio::test]
async fn external_peer_with_4_octet_as_and_unknown_addresses_refused() {
    let us = Ipv4Addr::new(127, 0, 4, 1);
    let peer = Ipv4Addr::new(127, 0, 4, 2);
    let stranger = Ipv4Addr::new(127, 0, 4, 9);
    let peer_listener = listener(peer).await;
    let our_listener = listener(us).await;
    let our_port = port(&our_listener);
    let mut config = config(us, our_port);
    config.local_as = 4_200_000_000;
    config.prefixes = vec![prefix("10.42.1.0/24")];
    config.peers = vec![PeerConfig {
        address: peer,
        remote_as: 65001,
        port: Some(port(&peer_listener)),
    }];
    let (speaker, mut events) = Speaker::start_on(config, our_listener).expect("start");

    // A connection from an address that is no peer is closed without a word.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(stranger), 0))
        .expect("bind");
    let mut intruder = socket
        .connect(SocketAddr::new(IpAddr::V4(us), our_port))
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = timeout(WAIT, intruder.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let mut scripted = ScriptedPeer::accept(&peer_listener).await;
    let open = scripted.establish(65001, peer).await;
    // My AS carries AS_TRANS; the real AS is in the capability.
    assert_eq!(open.asn, 4_200_000_000);
    assert!(open
        .capabilities
        .contains(&Capability::FourOctetAs(4_200_000_000)));
    assert!(open
        .capabilities
        .contains(&Capability::Multiprotocol { afi: 1, safi: 1 }));
    let raw_open = Message::Open(open).encode(FOUR).expect("encode");
    assert_eq!(&raw_open[20..22], &AS_TRANS.to_be_bytes());

    let Some(Message::Update(update)) = scripted.read().await else {
        panic!("expected the speaker's UPDATE");
    };
    assert_eq!(update.attributes.first_as(), Some(4_200_000_000));
    assert_eq!(update.attributes.local_pref, None);

    let path = |asns: Vec<u32>| PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(vec![AsSegment {
            kind: SegmentKind::Sequence,
            asns,
        }]),
        next_hop: Some(peer),
        ..PathAttributes::default()
    };
    // A path through our own AS is a loop and ignored; a proper one is learned.
    for (asns, nlri) in [
        (vec![65001, 4_200_000_000], "192.0.2.0/24"),
        (vec![65001, 4_200_000_001], "198.51.100.0/24"),
    ] {
        scripted
            .write(Message::Update(Update {
                attributes: path(asns),
                nlri: vec![prefix(nlri)],
                ..Update::default()
            }))
            .await;
    }
    let mut routes = BTreeMap::new();
    let key = (peer, prefix("198.51.100.0/24"));
    wait_for(&mut events, &mut routes, "the external route", |r| {
        r.contains_key(&key)
    })
    .await;
    assert_eq!(routes.len(), 1, "{routes:?}");

    // Shutting down says so to the peer.
    speaker.shutdown().await;
    let notification = scripted.notification().await.expect("a NOTIFICATION");
    assert_eq!(
        (notification.code, notification.subcode),
        (code::CEASE, subcode::ADMINISTRATIVE_SHUTDOWN)
    );
}

#[tokio::test]
async fn peers_follow_set_peers_at_run_time() {
    let a = Ipv4Addr::new(127, 0, 5, 1);
    let b = Ipv4Addr::new(127, 0, 5, 2);
    let (a_listener, b_listener) = (listener(a).await, listener(b).await);
    let (a_port, b_port) = (port(&a_listener), port(&b_listener));
    let mut a_config = config(a, a_port);
    a_config.prefixes = vec![prefix("10.42.1.0/24")];
    let mut b_config = config(b, b_port);
    b_config.prefixes = vec![prefix("10.42.2.0/24")];
    b_config.peers = vec![PeerConfig {
        address: a,
        remote_as: 64512,
        port: Some(a_port),
    }];
    let (a_speaker, mut a_events) = Speaker::start_on(a_config, a_listener).expect("start a");
    let (b_speaker, mut b_events) = Speaker::start_on(b_config, b_listener).expect("start b");
    let (mut a_routes, mut b_routes) = (BTreeMap::new(), BTreeMap::new());

    // A knows no peers yet: B's connections are refused until A is told about B.
    let b_peer = PeerConfig {
        address: b,
        remote_as: 64512,
        port: Some(b_port),
    };
    a_speaker.set_peers(vec![b_peer]).await.expect("set peers");
    wait_for(&mut a_events, &mut a_routes, "B's prefix", |r| {
        r.contains_key(&(b, prefix("10.42.2.0/24")))
    })
    .await;
    wait_for(&mut b_events, &mut b_routes, "A's prefix", |r| {
        r.contains_key(&(a, prefix("10.42.1.0/24")))
    })
    .await;

    // Dropping B from A's peers ends the session: both sides withdraw.
    a_speaker.set_peers(Vec::new()).await.expect("set peers");
    wait_for(&mut a_events, &mut a_routes, "B's withdrawal", |r| {
        r.is_empty()
    })
    .await;
    wait_for(&mut b_events, &mut b_routes, "A's withdrawal", |r| {
        r.is_empty()
    })
    .await;

    // And adding it back brings the routes back.
    a_speaker.add_peer(b_peer).await.expect("add peer");
    wait_for(&mut b_events, &mut b_routes, "A's prefix again", |r| {
        r.contains_key(&(a, prefix("10.42.1.0/24")))
    })
    .await;
    a_speaker.shutdown().await;
    b_speaker.shutdown().await;
}
