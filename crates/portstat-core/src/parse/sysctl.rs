//! The port settings of a namespace, as the kernel writes them in procfs:
//! `ip_local_port_range`, `ip_local_reserved_ports`, and sysctls of one
//! number. The binary's `source::sysctl` reads them.

use crate::model::{PortRange, ReservedPorts};

/// Parses a sysctl that holds one unsigned number.
pub fn parse_number(text: &str) -> Result<u32, String> {
    let text = text.trim();
    text.parse::<u32>()
        .map_err(|_| format!("{text:?} is not an unsigned number"))
}

/// Parses `ip_local_port_range`: two port numbers separated by white space.
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let mut fields = text.split_ascii_whitespace();
    let (Some(start), Some(end), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(format!("expected two ports, found {text:?}"));
    };
    let start = parse_port(start)?;
    let end = parse_port(end)?;
    if end < start {
        return Err(format!("range end {end} is below its start {start}"));
    }
    Ok(PortRange { start, end })
}

/// Parses `ip_local_reserved_ports`: a comma-separated list of ports and
/// inclusive ranges such as `8080,9000-9100`, possibly empty.
pub fn parse_reserved_ports(text: &str) -> Result<ReservedPorts, String> {
    let mut reserved = ReservedPorts::new();
    let text = text.trim();
    if text.is_empty() {
        return Ok(reserved);
    }
    for item in text.split(',') {
        let item = item.trim();
        match item.split_once('-') {
            Some((first, last)) => {
                let first = parse_port(first.trim())?;
                let last = parse_port(last.trim())?;
                if last < first {
                    return Err(format!("range {item:?} ends before it starts"));
                }
                reserved.insert_range(first, last);
            }
            None => reserved.insert(parse_port(item)?),
        }
    }
    Ok(reserved)
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("{text:?} is not a port number (0 to 65535)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(set: &ReservedPorts) -> Vec<u16> {
        (0..=u16::MAX).filter(|&port| set.contains(port)).collect()
    }

    #[test]
    fn range_is_two_ports_separated_by_white_space() {
        assert_eq!(
            parse_port_range("32768\t60999\n"),
            Ok(PortRange {
                start: 32768,
                end: 60999
            })
        );
        assert_eq!(
            parse_port_range("40000 40000"),
            Ok(PortRange {
                start: 40000,
                end: 40000
            })
        );
    }

    #[test]
    fn range_rejects_garbage() {
        for text in [
            "",
            "32768",
            "1 2 3",
            "a 5",
            "70000 70001",
            "500 400",
            "-1 5",
        ] {
            assert!(parse_port_range(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("2\n"), Ok(2));
        assert_eq!(parse_number(" 1000 "), Ok(1000));
        for text in ["", "-1", "x", "1 2"] {
            assert!(parse_number(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn reserved_ports_empty() {
        assert!(parse_reserved_ports("").unwrap().is_empty());
        assert!(parse_reserved_ports("\n").unwrap().is_empty());
        assert!(parse_reserved_ports("  \t\n").unwrap().is_empty());
    }

    #[test]
    fn reserved_ports_lists_and_ranges() {
        let set = parse_reserved_ports("8080,9000-9003,65535\n").unwrap();
        assert_eq!(ports(&set), vec![8080, 9000, 9001, 9002, 9003, 65535]);
        assert_eq!(ports(&parse_reserved_ports("0").unwrap()), vec![0]);
        assert_eq!(ports(&parse_reserved_ports("7-7").unwrap()), vec![7]);
    }

    #[test]
    fn reserved_ports_tolerate_white_space() {
        let set = parse_reserved_ports(" 8080 , 9000 - 9001 \n").unwrap();
        assert_eq!(ports(&set), vec![8080, 9000, 9001]);
    }

    #[test]
    fn reserved_ports_reject_garbage() {
        for text in [
            "abc",
            "8080,",
            ",8080",
            "8080,,9000",
            "9000-",
            "-9000",
            "9-8",
            "70000",
            "1-2-3",
            "8080;9000",
            "\u{0}\u{1}",
        ] {
            assert!(parse_reserved_ports(text).is_err(), "{text:?} was accepted");
        }
    }
}
