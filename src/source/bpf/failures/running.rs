//! The failure counter of another exporter running on this host, for
//! `inspect`: found by the maps its process holds, and read as it reads
//! them.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, Map, MapData};
use portstat_core::model::{ConnectionNames, PortFailureCounts};

use super::super::{BpfError, unavailable};
use super::{
    FailureMaps, LiveCookies, MAP_NAMES, NAMES_MAP, NETS_MAP, NameKey, NameKeyBytes, NameValue,
    NameValueBytes, name_from_entry, read_error,
};

/// An exporter running on this host, as `inspect` finds it: by the maps of
/// the failure counter that one process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningExporter {
    /// Its process id; `None` where no process could be seen holding them
    /// (the newest maps of each name are then read).
    pub pid: Option<u32>,
    /// The inode of its network namespace, where known.
    pub netns: Option<u64>,
    /// The ids of its maps, in the order of `MAP_NAMES`, then `NAMES_MAP`
    /// and `NETS_MAP`.
    ids: [u32; MAP_COUNT],
}

/// The failure counter's maps: `MAP_NAMES`, `NAMES_MAP` and `NETS_MAP`.
const MAP_COUNT: usize = MAP_NAMES.len() + 2;

impl RunningExporter {
    /// Whether the exporter samples the namespace of inode `netns`: its
    /// programs record no other.
    fn samples(&self, netns: u64) -> bool {
        let Ok(inode) = u32::try_from(netns) else {
            return false;
        };
        let Ok(data) = MapData::from_id(self.ids[MAP_NAMES.len() + 1]) else {
            return false;
        };
        HashMap::<MapData, u32, u32>::try_from(Map::HashMap(data))
            .is_ok_and(|map| map.get(&inode, 0).is_ok())
    }
}

/// The exporter `inspect` reads: of the exporters running on this host
/// that sample the network namespace of inode `own` (the programs of each
/// record only the namespaces it samples), the newest in that namespace,
/// else the newest. `None` where none samples it. Seeing the maps needs
/// `CAP_SYS_ADMIN`, and their processes `CAP_SYS_PTRACE`.
pub fn running_exporter(own: Option<u64>) -> Result<Option<RunningExporter>, BpfError> {
    let mut slot_of: StdHashMap<u32, usize> = StdHashMap::new();
    let mut newest: [Option<u32>; MAP_COUNT] = [None; MAP_COUNT];
    for info in aya::maps::loaded_maps() {
        let info = info.map_err(|error| {
            // aya's error names the command; its source, the kernel's errno.
            let errno = std::error::Error::source(&error)
                .map(|source| format!(": {source}"))
                .unwrap_or_default();
            unavailable("map ids", format!("{error}{errno}"))
        })?;
        let Some(name) = info.name_as_str() else {
            continue;
        };
        if let Some(slot) = MAP_NAMES
            .iter()
            .chain([&NAMES_MAP, &NETS_MAP])
            .position(|known| *known == name)
        {
            slot_of.insert(info.id(), slot);
            newest[slot] = newest[slot].max(Some(info.id()));
        }
    }
    let (Some(newest), Some(own)) = (complete(newest), own) else {
        return Ok(None);
    };
    let mut exporters = holders(&slot_of);
    if exporters.is_empty() {
        // No process could be seen holding them: the newest maps.
        exporters.push(RunningExporter {
            pid: None,
            netns: None,
            ids: newest,
        });
    }
    exporters.retain(|exporter| exporter.samples(own));
    // The newest first: the highest map ids.
    exporters.sort_by_key(|exporter| std::cmp::Reverse(exporter.ids[0]));
    let chosen = exporters
        .iter()
        .find(|exporter| exporter.netns == Some(own))
        .or(exporters.first())
        .cloned();
    Ok(chosen)
}

/// The ids of every slot, where each has one.
fn complete(ids: [Option<u32>; MAP_COUNT]) -> Option<[u32; MAP_COUNT]> {
    let mut all = [0; MAP_COUNT];
    for (into, id) in all.iter_mut().zip(ids) {
        *into = id?;
    }
    Some(all)
}

/// The processes that hold a map of every slot, by their descriptors'
/// `map_id` (`/proc/<pid>/fdinfo`).
fn holders(slot_of: &StdHashMap<u32, usize>) -> Vec<RunningExporter> {
    use std::os::unix::fs::MetadataExt;
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(descriptors) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let mut ids: [Option<u32>; MAP_COUNT] = [None; MAP_COUNT];
        for descriptor in descriptors.flatten() {
            let is_map = std::fs::read_link(descriptor.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-map");
            if !is_map {
                continue;
            }
            let info = process.path().join("fdinfo").join(descriptor.file_name());
            let Some(id) = std::fs::read_to_string(info).ok().and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("map_id:"))
                    .and_then(|id| id.trim().parse::<u32>().ok())
            }) else {
                continue;
            };
            if let Some(&slot) = slot_of.get(&id) {
                ids[slot] = ids[slot].max(Some(id));
            }
        }
        if let Some(ids) = complete(ids) {
            found.push(RunningExporter {
                pid: Some(pid),
                netns: std::fs::metadata(process.path().join("ns/net"))
                    .ok()
                    .map(|metadata| metadata.ino()),
                ids,
            });
        }
    }
    found
}

/// The counts of the exporter `exporter`, for `inspect`. Opening another
/// process's maps by id needs `CAP_SYS_ADMIN`.
pub fn running_counts(
    exporter: &RunningExporter,
    live: &mut dyn LiveCookies,
) -> Result<PortFailureCounts, BpfError> {
    let open = |id| MapData::from_id(id).map_err(|error| unavailable("open map", error));
    let ids = &exporter.ids;
    let raw = FailureMaps::new([
        open(ids[0])?,
        open(ids[1])?,
        open(ids[2])?,
        open(ids[3])?,
        open(ids[4])?,
        open(ids[5])?,
    ])?
    .read()?;
    Ok(raw.resolve(live).counts)
}

/// Who connected each connection of namespace `netns`, whose cookie is
/// `cookie` where known, as the exporter `exporter` names them, for
/// `inspect`.
pub fn running_names(
    exporter: &RunningExporter,
    netns: u64,
    cookie: Option<u64>,
) -> Result<ConnectionNames, BpfError> {
    let data = MapData::from_id(exporter.ids[MAP_NAMES.len()])
        .map_err(|error| unavailable("open map", error))?;
    let map: HashMap<MapData, NameKeyBytes, NameValueBytes> =
        HashMap::try_from(Map::LruHashMap(data)).map_err(|error| unavailable("maps", error))?;
    let mut names = ConnectionNames::new();
    for entry in map.iter() {
        let (key, value) = entry.map_err(read_error)?;
        let (key, value) = (NameKey::decode(&key), NameValue::decode(&value));
        let of_another = cookie.is_some_and(|cookie| key.cookie != 0 && key.cookie != cookie);
        if let Some((of, connection, connector)) = name_from_entry(&key, &value)
            && of == netns
            && !of_another
        {
            names.insert(connection, connector);
        }
    }
    Ok(names)
}
