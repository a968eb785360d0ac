//! A namespace's socket counts, from `/proc/net/sockstat`, `sockstat6` and
//! `protocols`: cheap to read, since the kernel keeps them per namespace,
//! and enough to know which dumps can be skipped.
//!
//! Every dump walks a whole table: by default all namespaces share the
//! host's TCP and UDP tables, so dumping a namespace that holds nothing
//! still walks every other namespace's sockets. The counts say when there
//! is nothing to find:
//! - TCP: no socket in the connection or listening tables (`TCP: inuse`,
//!   `TCP6: inuse`), none in TIME_WAIT (`tw`), and no socket outside every
//!   table, which a bound-but-inactive one would be;
//! - UDP: no bound socket (`UDP: inuse`, `UDP6: inuse`);
//! - bound-but-inactive TCP sockets: a user socket that no protocol counts
//!   as in use (`sockets: used` against the sum of `protocols`).
//!
//! `orphan` is not used: the kernel sums it over every namespace, and
//! orphans are in the connection table, so `inuse` counts them already.
//!
//! The one case the counts can hide: kernel-created sockets (an NFS mount,
//! a UDP tunnel) count as in use but not as used, so as many of them as
//! there are user sockets outside the tables would hide those. The exporter
//! then misses bound-but-inactive sockets until the two differ.

/// What the counts say of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// TCP sockets in the connection and listening tables, IPv4 and IPv6,
    /// and in TIME_WAIT.
    pub tcp_in_tables: u64,
    /// Bound UDP sockets, IPv4 and IPv6.
    pub udp_in_tables: u64,
    /// User sockets minus the sockets every protocol counts as in use: not
    /// 0 when some socket is in no table (bound-but-inactive TCP, or not
    /// bound at all), or when kernel sockets are in use.
    pub outside_tables: i64,
}

impl Census {
    /// Whether the TCP dump would find nothing.
    pub fn tcp_empty(&self) -> bool {
        self.tcp_in_tables == 0 && self.outside_tables == 0
    }

    /// Whether the UDP dump would find nothing.
    pub fn udp_empty(&self) -> bool {
        self.udp_in_tables == 0
    }

    /// Whether bound-but-inactive TCP sockets may exist, and must be looked
    /// for (a walk of the bind table).
    pub fn may_hold_bound_inactive(&self) -> bool {
        self.outside_tables != 0
    }
}

/// Parses the files' text; `protocols` may be left out when `sockets: used`
/// is 0.
pub fn parse(sockstat: &str, sockstat6: &str, protocols: Option<&str>) -> Option<Census> {
    let used = field(sockstat, "sockets:", "used")?;
    let tcp = field(sockstat, "TCP:", "inuse")? + field(sockstat, "TCP:", "tw")?;
    let udp = field(sockstat, "UDP:", "inuse")?;
    let tcp6 = field(sockstat6, "TCP6:", "inuse").unwrap_or(0);
    let udp6 = field(sockstat6, "UDP6:", "inuse").unwrap_or(0);
    let Some(protocols) = protocols else {
        return (used == 0).then_some(Census {
            tcp_in_tables: tcp + tcp6,
            udp_in_tables: udp + udp6,
            outside_tables: 0,
        });
    };
    let mut in_use: u64 = 0;
    let mut lines = protocols.lines();
    // The header names the columns: find "sockets" rather than assume it.
    let column = lines
        .next()?
        .split_whitespace()
        .position(|name| name == "sockets")?;
    for line in lines.filter(|line| !line.trim().is_empty()) {
        in_use += line.split_whitespace().nth(column)?.parse::<u64>().ok()?;
    }
    Some(Census {
        tcp_in_tables: tcp + tcp6,
        udp_in_tables: udp + udp6,
        outside_tables: i64::try_from(used).ok()? - i64::try_from(in_use).ok()?,
    })
}

/// The number after `name` on the line that starts with `label`.
pub fn field(text: &str, label: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(label))?;
    let mut words = line[label.len()..].split_whitespace();
    while let Some(word) = words.next() {
        if word == name {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTOCOLS: &str = "\
protocol  size sockets  memory press maxhdr  slab module     cl co di ac io in de sh ss gs se re sp bi br ha uh gp em
PACKET    1472      0      -1   NI       0   no   kernel      n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n
UNIX-STREAM 1088      1      -1   NI       0   yes  kernel      y  n  y  y  y  y  y  y  y  y  n  y  n  n  n  n  n  n  n
UNIX      1088      0      -1   NI       0   yes  kernel      y  n  y  y  y  y  y  y  y  y  n  y  n  n  n  n  n  n  n
UDP       1152      2       1   no     128   yes  kernel      y  y  y  n  y  y  y  n  y  y  y  y  y  n  n  n  y  y  n
TCP       2432      3       4   no     320   yes  kernel      y  y  y  y  y  y  y  y  y  y  y  y  y  n  y  y  y  y  y
NETLINK   1104      1      -1   NI       0   no   kernel      n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n
";

    fn sockstat(used: u64, tcp: u64, tw: u64, udp: u64) -> String {
        format!(
            "sockets: used {used}\nTCP: inuse {tcp} orphan 7 tw {tw} alloc 99 mem 1\n\
             UDP: inuse {udp} mem 0\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n"
        )
    }

    #[test]
    fn an_empty_namespace_needs_no_dump() {
        let empty = "protocol  size sockets  memory\nTCP 2432 0 0\nUDP 1152 0 0\n";
        let census = parse(
            &sockstat(0, 0, 0, 0),
            "TCP6: inuse 0\nUDP6: inuse 0\n",
            Some(empty),
        )
        .unwrap();
        assert!(census.tcp_empty() && census.udp_empty());
        assert!(!census.may_hold_bound_inactive());
        // With no socket used, protocols is not needed.
        let unread = parse(&sockstat(0, 0, 0, 0), "", None).unwrap();
        assert_eq!(unread, census);
        // With some, it is.
        assert_eq!(parse(&sockstat(1, 0, 0, 0), "", None), None);
    }

    #[test]
    fn counts_come_from_both_families_and_time_wait() {
        // 3 TCP, 2 UDP, 1 unix, 1 netlink in use: 7, as many as are used.
        let census = parse(
            &sockstat(7, 3, 0, 2),
            "TCP6: inuse 0\nUDP6: inuse 0\n",
            Some(PROTOCOLS),
        )
        .unwrap();
        assert_eq!(census.tcp_in_tables, 3);
        assert_eq!(census.udp_in_tables, 2);
        assert_eq!(census.outside_tables, 0);
        assert!(!census.tcp_empty() && !census.may_hold_bound_inactive());
        // TIME_WAIT alone is something to dump.
        let tw = parse(&sockstat(0, 0, 4, 0), "", Some("protocol size sockets\n")).unwrap();
        assert!(!tw.tcp_empty());
        // IPv6 alone too.
        let six = parse(
            &sockstat(1, 0, 0, 0),
            "TCP6: inuse 1\nUDP6: inuse 2\n",
            Some("protocol size sockets\nTCPv6 1 1\n"),
        )
        .unwrap();
        assert!(!six.tcp_empty() && !six.udp_empty());
    }

    #[test]
    fn a_socket_outside_every_table_may_be_bound() {
        // 8 used, 7 counted in use: one is in no table.
        let census = parse(&sockstat(8, 3, 0, 2), "", Some(PROTOCOLS)).unwrap();
        assert_eq!(census.outside_tables, 1);
        assert!(census.may_hold_bound_inactive());
        // No TCP socket in the tables, yet one may be bound: TCP is dumped.
        let bound = parse(
            &sockstat(1, 0, 0, 0),
            "",
            Some("protocol size sockets\nTCP 1 0\n"),
        )
        .unwrap();
        assert!(!bound.tcp_empty());
    }

    #[test]
    fn unreadable_counts_skip_nothing() {
        assert_eq!(parse("", "", Some(PROTOCOLS)), None);
        assert_eq!(parse(&sockstat(1, 0, 0, 0), "", Some("no header\n")), None);
        assert_eq!(
            parse(
                &sockstat(1, 0, 0, 0),
                "",
                Some("protocol size sockets\nTCP 1 x\n")
            ),
            None
        );
    }
}
