//! Sets and lists of port numbers, as compact as the ports they hold.

use super::PortRange;

/// A set of port numbers, one bit per port: 8 KiB once a port is in it,
/// nothing while it is empty (a namespace with no sockets costs no bitmap).
#[derive(Clone)]
pub struct PortSet {
    words: Option<Box<[u64; 1024]>>,
}

impl PortSet {
    /// The empty set.
    pub fn new() -> PortSet {
        PortSet { words: None }
    }

    /// Adds `port`.
    pub fn insert(&mut self, port: u16) {
        let words = self.words.get_or_insert_with(|| Box::new([0; 1024]));
        words[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    /// Adds every port from `first` to `last`, both included.
    pub fn insert_range(&mut self, first: u16, last: u16) {
        for port in first..=last {
            self.insert(port);
        }
    }

    /// Adds every port of `other`.
    pub fn insert_all(&mut self, other: &PortSet) {
        let Some(other) = &other.words else {
            return;
        };
        let words = self.words.get_or_insert_with(|| Box::new([0; 1024]));
        for (word, other) in words.iter_mut().zip(other.iter()) {
            *word |= other;
        }
    }

    /// Removes every port of `other`.
    pub fn remove_all(&mut self, other: &PortSet) {
        let (Some(words), Some(other)) = (&mut self.words, &other.words) else {
            return;
        };
        for (word, other) in words.iter_mut().zip(other.iter()) {
            *word &= !other;
        }
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.words
            .as_ref()
            .is_some_and(|words| words[usize::from(port >> 6)] & (1 << (port & 63)) != 0)
    }

    /// How many ports of `range` are in the set.
    pub fn count_in(&self, range: PortRange) -> u32 {
        if self.words.is_none() {
            return 0;
        }
        (range.start..=range.end)
            .filter(|&port| self.contains(port))
            .count() as u32
    }

    /// How many ports are in the set.
    pub fn len(&self) -> u32 {
        self.words
            .as_ref()
            .map_or(0, |words| words.iter().map(|word| word.count_ones()).sum())
    }

    /// Whether the set holds no port.
    pub fn is_empty(&self) -> bool {
        self.words
            .as_ref()
            .is_none_or(|words| words.iter().all(|&word| word == 0))
    }

    /// The ports in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.words.iter().flat_map(|words| {
            words.iter().enumerate().flat_map(|(index, &word)| {
                let mut rest = word;
                std::iter::from_fn(move || {
                    if rest == 0 {
                        return None;
                    }
                    let bit = rest.trailing_zeros();
                    rest &= rest - 1;
                    Some((index as u32 * 64 + bit) as u16)
                })
            })
        })
    }
}

impl PartialEq for PortSet {
    fn eq(&self, other: &PortSet) -> bool {
        match (&self.words, &other.words) {
            (Some(a), Some(b)) => a == b,
            _ => self.is_empty() && other.is_empty(),
        }
    }
}

impl Eq for PortSet {}

/// Distinct ports, held compactly: a list while it is short, a `PortSet`
/// once the list would take more than the bitmap's 8 KiB. Memory follows the
/// ports held, never more than one bitmap.
#[derive(Debug, Clone, Default)]
pub struct PortList {
    /// Ports in the order they came, duplicates included, while short.
    list: Vec<u16>,
    /// The set, once the list grew past `PortList::LONGEST`.
    set: Option<PortSet>,
}

impl PortList {
    /// The longest list kept before it becomes a bitmap: 4,096 ports take
    /// the bitmap's 8 KiB.
    const LONGEST: usize = 4096;

    /// Adds `port`.
    pub fn insert(&mut self, port: u16) {
        if let Some(set) = &mut self.set {
            set.insert(port);
            return;
        }
        self.list.push(port);
        if self.list.len() > Self::LONGEST {
            self.list.sort_unstable();
            self.list.dedup();
            if self.list.len() > Self::LONGEST / 2 {
                let mut set = PortSet::new();
                for &port in &self.list {
                    set.insert(port);
                }
                self.set = Some(set);
                self.list = Vec::new();
            }
        }
    }

    /// Adds every port of `other`.
    pub fn extend(&mut self, other: PortList) {
        if self.list.is_empty() && self.set.is_none() {
            *self = other;
            return;
        }
        match other.set {
            Some(set) => set.iter().for_each(|port| self.insert(port)),
            None => other.list.into_iter().for_each(|port| self.insert(port)),
        }
    }

    /// How many distinct ports of `within` are in the list.
    pub fn count_within(&mut self, within: &PortSet) -> u32 {
        match &self.set {
            Some(set) => set.iter().filter(|&port| within.contains(port)).count() as u32,
            None => {
                self.list.sort_unstable();
                self.list.dedup();
                self.list
                    .iter()
                    .filter(|&&port| within.contains(port))
                    .count() as u32
            }
        }
    }

    /// How many distinct ports are in the list, leaving out `excluded`.
    pub fn count_without(&mut self, excluded: &PortSet) -> u32 {
        match &self.set {
            Some(set) => {
                let mut set = set.clone();
                set.remove_all(excluded);
                set.len()
            }
            None => {
                self.list.sort_unstable();
                self.list.dedup();
                self.list
                    .iter()
                    .filter(|&&port| !excluded.contains(port))
                    .count() as u32
            }
        }
    }
}

impl Default for PortSet {
    fn default() -> Self {
        PortSet::new()
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports: Vec<u16> = (0..=u16::MAX).filter(|&port| self.contains(port)).collect();
        formatter.debug_set().entries(ports).finish()
    }
}

/// The ports that `net.ipv4.ip_local_reserved_ports` keeps out of automatic
/// assignment.
pub type ReservedPorts = PortSet;
