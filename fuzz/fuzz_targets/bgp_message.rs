//! Fuzz target: the bytes a BGP peer sends to corten's speaker (`corten_agent::network::bgp`,
//! compiled in by path: it depends on nothing else of the agent).
//! The bytes are framed as the session's reader does (`frame_length`) and decoded as one
//! message with 2-octet and with 4-octet AS paths; a decoded message is fed to an
//! established session's FSM and, if an UPDATE, to an Adj-RIB-In.
//!
//! Properties: nothing panics or hangs; framing never claims more than the input or the
//! 4096-octet maximum; whatever decodes re-encodes within the maximum and decodes back to
//! itself; whatever is refused maps to a message header, OPEN or UPDATE error whose
//! NOTIFICATION can be sent. Touches no socket.
#![no_main]

use std::net::Ipv4Addr;

#[allow(dead_code, unused_imports)]
#[path = "../../agent/src/network/bgp/mod.rs"]
mod bgp;

use bgp::{
    fsm::{Event, Fsm, FsmConfig, State},
    message::{
        frame_length, Capability, DecodeContext, Message, Open, HEADER_LEN, MAX_MESSAGE_LEN,
    },
    rib::{AdjRibIn, ImportPolicy},
};
use libfuzzer_sys::fuzz_target;

const LOCAL_AS: u32 = 64512;
const ROUTER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// An FSM whose session with an internal peer is established.
fn established(four_octet_as: bool) -> Fsm {
    let mut fsm = Fsm::new(FsmConfig {
        local_as: LOCAL_AS,
        remote_as: LOCAL_AS,
        router_id: ROUTER_ID,
        hold_time: 90,
        connect_retry: std::time::Duration::from_secs(1),
        connect_retry_max: std::time::Duration::from_secs(8),
    });
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpConnected);
    let capabilities = if four_octet_as {
        vec![Capability::FourOctetAs(LOCAL_AS)]
    } else {
        Vec::new()
    };
    fsm.handle(Event::Received(Message::Open(Open {
        asn: LOCAL_AS,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        capabilities,
    })));
    fsm.handle(Event::Received(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
    fsm
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(len)) = frame_length(data) {
        assert!(len <= data.len(), "{len} > {}", data.len());
        assert!((HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len), "{len}");
    }
    for four_octet_as in [false, true] {
        let context = DecodeContext { four_octet_as };
        match Message::decode(data, context) {
            Ok(message) => {
                let wire = match message.encode(context) {
                    Ok(wire) => wire,
                    Err(error) => panic!("{message:?} does not re-encode: {error}"),
                };
                assert!(wire.len() <= MAX_MESSAGE_LEN);
                assert_eq!(Message::decode(&wire, context).as_ref(), Ok(&message));
                if let Message::Update(update) = &message {
                    let policy = ImportPolicy {
                        local_as: LOCAL_AS,
                        router_id: ROUTER_ID,
                        internal: true,
                    };
                    let mut rib = AdjRibIn::default();
                    rib.apply(update, &policy);
                    assert!(rib.routes().len() <= update.nlri.len());
                }
                let mut fsm = established(four_octet_as);
                fsm.handle(Event::Received(message));
            }
            Err(error) => {
                let notification = error.notification();
                assert!((1..=3).contains(&notification.code), "{error:?}");
                assert!(Message::Notification(notification).encode(context).is_ok());
            }
        }
    }
});
