//! The lab VPC's DNS64 resolver (RFC 6147), as Route 53 Resolver answers a
//! subnet with DNS64 on: names of the lab's IPv4-only internet get their
//! `A` record, and for `AAAA` an address in `64:ff9b::/96` synthesized from
//! it; any other name is NXDOMAIN. Messages are encoded by hickory-proto;
//! also the lab clients' side of it, [`resolve`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::lab::nat64_address;

/// How long synthesized and real answers may be cached.
const TTL: u32 = 60;

/// The answer to one query: pure, so the unit tests need no socket.
pub fn answer(query: &[u8], names: &BTreeMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(false);
    let Some(q) = request.queries().first().cloned() else {
        response.set_response_code(ResponseCode::FormErr);
        return response.to_vec().ok();
    };
    response.add_query(q.clone());
    let name = q.name().to_lowercase().to_ascii();
    match names.get(name.trim_end_matches('.')) {
        None => {
            response.set_response_code(ResponseCode::NXDomain);
        }
        Some(v4) => {
            let data = match q.query_type() {
                RecordType::A => Some(RData::A(A(*v4))),
                // IPv4-only: the AAAA is synthesized (RFC 6147, 5.1).
                RecordType::AAAA => Some(RData::AAAA(AAAA(nat64_address(*v4)))),
                // NOERROR with no data for other types of a known name.
                _ => None,
            };
            if let Some(data) = data {
                response.add_answer(Record::from_rdata(q.name().clone(), TTL, data));
            }
        }
    }
    response.to_vec().ok()
}

/// Serves [`answer`] on `socket` until the task is dropped.
pub async fn serve(socket: UdpSocket, names: BTreeMap<String, Ipv4Addr>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        if let Some(reply) = answer(&buf[..n], &names) {
            socket.send_to(&reply, peer).await?;
        }
    }
}

/// Asks `server` for `name`'s `AAAA` records, as a stub resolver does.
pub async fn resolve(
    server: IpAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv6Addr>, String> {
    let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| format!("{name}: {e}"))?;
    let mut query = Message::new();
    query
        .set_id(0x6464)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(fqdn, RecordType::AAAA));
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = match server {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket
        .send_to(&bytes, (server, 53))
        .await
        .map_err(|e| format!("to {server}: {e}"))?;
    let mut buf = vec![0u8; 1500];
    let n = tokio::time::timeout(timeout, socket.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer from {server} for {name} within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    if reply.response_code() != ResponseCode::NoError {
        return Err(format!(
            "{server} answers {name}: {}",
            reply.response_code()
        ));
    }
    Ok(reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(name: &str, kind: RecordType, names: &BTreeMap<String, Ipv4Addr>) -> Message {
        let mut q = Message::new();
        q.set_id(7)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        Message::from_vec(&answer(&q.to_vec().unwrap(), names).unwrap()).unwrap()
    }

    #[test]
    fn ipv4_only_names_get_a_synthesized_aaaa_and_unknown_ones_nxdomain() {
        let names = BTreeMap::from([(
            "internet.natron.lab".to_string(),
            Ipv4Addr::new(198, 51, 100, 10),
        )]);
        let aaaa = ask("Internet.Natron.Lab.", RecordType::AAAA, &names);
        assert_eq!(aaaa.id(), 7);
        assert_eq!(aaaa.response_code(), ResponseCode::NoError);
        assert_eq!(
            aaaa.answers()[0].data(),
            &RData::AAAA(AAAA("64:ff9b::c633:640a".parse().unwrap()))
        );
        let a = ask("internet.natron.lab.", RecordType::A, &names);
        assert_eq!(
            a.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(198, 51, 100, 10)))
        );
        let none = ask("elsewhere.example.", RecordType::AAAA, &names);
        assert_eq!(none.response_code(), ResponseCode::NXDomain);
        assert!(none.answers().is_empty());
    }
}
