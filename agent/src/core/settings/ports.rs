//! Port ranges as written ("LOW-HIGH"), and NAT64's taken out of
//! masquerade's.

/// Parses "LOW-HIGH" into a port range.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} is not a port range LOW-HIGH with 1 <= LOW <= HIGH <= 65535");
    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Masquerade's ports with NAT64's taken out. Jool translates outside
/// connection tracking, so a port both could pick would let a masqueraded
/// connection and a NAT64 session share a 5-tuple. NAT64's range must lie
/// outside masquerade's or at one end of it, so that what is left is one
/// range; and something must be left.
pub fn carve(nat: (u16, u16), nat64: (u16, u16)) -> Result<(u16, u16), String> {
    let show = |(lo, hi): (u16, u16)| format!("{lo}-{hi}");
    if nat64.1 < nat.0 || nat64.0 > nat.1 {
        return Ok(nat);
    }
    let left = if nat64.0 <= nat.0 && nat64.1 < nat.1 {
        Some((nat64.1 + 1, nat.1))
    } else if nat64.1 >= nat.1 && nat64.0 > nat.0 {
        Some((nat.0, nat64.0 - 1))
    } else {
        None
    };
    left.ok_or_else(|| {
        format!(
            "{} must lie outside nat.port_range {} or at one end of it (NAT64's ports are taken out of masquerade's, which must stay one range)",
            show(nat64),
            show(nat)
        )
    })
}
