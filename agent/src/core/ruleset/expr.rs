//! Building blocks of natron's rules in the nftables crate's JSON schema,
//! spelled as `nft -j list` prints them.

use std::borrow::Cow;

use nftables::expr::{
    BinaryOperation, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload,
    PayloadField, Prefix, TcpOption, CT,
};
use nftables::schema::{
    Chain, NfCmd, NfListObject, NfObject, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{AnonymousCounter, Counter, JumpTarget, Mangle, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{FAMILY, TABLE};

/// A base chain of `ip natron`.
pub(super) fn base_chain(
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
    policy: NfChainPolicy,
) -> NfListObject<'static> {
    base_chain_in(FAMILY, name, kind, hook, prio, policy)
}

/// A base chain of natron's table of `family`.
pub(super) fn base_chain_in(
    family: NfFamily,
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
    policy: NfChainPolicy,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family,
        table: TABLE.into(),
        name: name.to_string().into(),
        newname: None,
        handle: None,
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        dev: None,
        policy: Some(policy),
    })
}

/// A base chain of family `netdev` on one device (its hook: ingress or
/// egress), accepting whatever it sees.
pub(super) fn device_chain(
    name: &str,
    hook: NfHook,
    prio: i32,
    device: &str,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::NetDev,
        table: TABLE.into(),
        name: name.to_string().into(),
        newname: None,
        handle: None,
        _type: Some(NfChainType::Filter),
        hook: Some(hook),
        prio: Some(prio),
        dev: Some(device.to_string().into()),
        policy: Some(NfChainPolicy::Accept),
    })
}

pub(super) fn rule_in(
    chain: &str,
    name: &str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    rule_of(FAMILY, chain, name, expr)
}

/// A rule of natron's table of `family`, named by its comment.
pub(super) fn rule_of(
    family: NfFamily,
    chain: &str,
    name: &str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family,
        table: TABLE.into(),
        chain: chain.to_string().into(),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(name.to_string().into()),
    })
}

/// natron's table of `family`.
pub(super) fn table_of(family: NfFamily) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family,
        name: TABLE.into(),
        handle: None,
    })
}

/// natron's table of `family`, `add` then `delete`: with the `add`, the
/// `delete` is safe when it is absent, so a batch removes it whether or
/// not it is there.
pub(super) fn clear_of(family: NfFamily) -> [NfObject<'static>; 2] {
    [
        NfObject::CmdObject(NfCmd::Add(table_of(family))),
        NfObject::CmdObject(NfCmd::Delete(table_of(family))),
    ]
}

/// A named interval set of addresses in natron's table of `family`, its
/// elements the (network, prefix length) of each network, as nft lists
/// them: sorted, and no elements at all when empty.
pub(super) fn interval_set(
    family: NfFamily,
    name: &str,
    set_type: SetType,
    nets: Vec<(String, u8)>,
) -> Set<'static> {
    Set {
        family,
        table: TABLE.into(),
        name: name.to_string().into(),
        handle: None,
        set_type: SetTypeValue::Single(set_type),
        policy: None,
        flags: Some([SetFlag::Interval].into_iter().collect()),
        elem: (!nets.is_empty()).then(|| {
            Cow::Owned(
                nets.iter()
                    .map(|(addr, len)| prefix(addr, (*len).into()))
                    .collect(),
            )
        }),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

pub(super) fn str_expr(s: &str) -> Expression<'static> {
    Expression::String(s.to_string().into())
}

pub(super) fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.to_string().into(),
            field: field.to_string().into(),
        },
    )))
}

pub(super) fn ip(field: &str) -> Expression<'static> {
    payload("ip", field)
}

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn prefix(addr: &str, len: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(str_expr(addr)),
        len,
    }))
}

pub(super) fn anon_set(items: &[&str]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items
            .iter()
            .map(|i| nftables::expr::SetItem::Element(str_expr(i)))
            .collect(),
    ))
}

pub(super) fn set_ref(name: &str) -> Expression<'static> {
    str_expr(&format!("@{name}"))
}

pub(super) fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

pub(super) fn not_matches(
    left: Expression<'static>,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

pub(super) fn ct_state(states: &[&str]) -> Statement<'static> {
    let right = match states {
        [one] => str_expr(one),
        many => Expression::List(many.iter().map(|s| str_expr(s)).collect()),
    };
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        right,
        op: Operator::IN,
    })
}

pub(super) fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(Some(AnonymousCounter {
        packets: Some(0),
        bytes: Some(0),
    })))
}

pub(super) fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

pub(super) fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

pub(super) fn plain_chain(name: &str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: FAMILY,
        table: TABLE.into(),
        name: name.to_string().into(),
        newname: None,
        handle: None,
        _type: None,
        hook: None,
        prio: None,
        dev: None,
        policy: None,
    })
}

pub(super) fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: chain.to_string().into(),
    })
}

/// TCP SYN or SYN-ACK (a handshake packet).
pub(super) fn syn_or_syn_ack() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            payload("tcp", "flags"),
            Expression::List(vec![str_expr("syn"), str_expr("rst")]),
        ))),
        right: str_expr("syn"),
        op: Operator::EQ,
    })
}

/// TCP SYN-ACK (the server's answer to a handshake).
pub(super) fn syn_ack() -> Statement<'static> {
    let syn_ack = || Expression::List(vec![str_expr("syn"), str_expr("ack")]);
    Statement::Match(Match {
        left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            payload("tcp", "flags"),
            syn_ack(),
        ))),
        right: syn_ack(),
        op: Operator::EQ,
    })
}

fn maxseg() -> Expression<'static> {
    Expression::Named(NamedExpression::TcpOption(TcpOption {
        name: "maxseg".into(),
        field: Some("size".into()),
    }))
}

/// `tcp option maxseg size > mss`. The nftables crate (0.6) has `LT` and
/// `GT` swapped in its serialisation (`LT` writes ">"): `LT` it is, and a
/// unit test pins the ">" that nft receives.
pub(super) fn mss_above(mss: u16) -> Statement<'static> {
    Statement::Match(Match {
        left: maxseg(),
        right: Expression::Number(mss.into()),
        op: Operator::LT,
    })
}

pub(super) fn mss_set(mss: u16) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: maxseg(),
        value: Expression::Number(mss.into()),
    })
}

pub(super) fn fib_type(flag: FibFlag) -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: [flag].into_iter().collect(),
    }))
}
