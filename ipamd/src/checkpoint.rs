//! The allocation checkpoint: aws-node's `ipam.json` format plus the recently released
//! addresses, so a restart neither forgets a live pod nor reuses an address still cooling down.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The format version aws-node writes and reads.
pub const VERSION: &str = "vpc-cni-ipam/1";

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: write: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("checkpoint {path}: read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("checkpoint {path}: unknown version {version:?} (want {VERSION:?})")]
    UnknownVersion { path: PathBuf, version: String },
    #[error("checkpoint {path}: corrupt ({reason}), moved to {moved_to}")]
    Corrupt {
        path: PathBuf,
        reason: String,
        moved_to: PathBuf,
    },
    #[error("checkpoint {path}: corrupt ({reason}) and could not be moved aside: {source}")]
    CorruptStuck {
        path: PathBuf,
        reason: String,
        source: io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointFile {
    pub version: String,
    #[serde(default)]
    pub allocations: Vec<CheckpointAllocation>,
    /// Ours: addresses still in IP_COOLDOWN_PERIOD. aws-node ignores unknown fields.
    #[serde(
        rename = "recentlyReleased",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub recently_released: Vec<ReleasedAddress>,
    /// Ours: branch ENIs held by pods or cooling down after one (security groups for pods).
    #[serde(rename = "branchEnis", default, skip_serializing_if = "Vec::is_empty")]
    pub branch_enis: Vec<CheckpointBranch>,
}

/// One branch ENI on the trunk: whom it serves, or since when it cools down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointBranch {
    pub eni_id: String,
    pub vlan_id: u16,
    pub mac: String,
    pub ipv4: Ipv4Addr,
    pub subnet_cidr: ipnet::Ipv4Net,
    #[serde(rename = "associationID", default)]
    pub association_id: String,
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Set while a pod holds the branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<CheckpointBranchPod>,
    /// Unix nanoseconds; set while the branch cools down after its pod left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBranchPod {
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(rename = "ifName")]
    pub if_name: String,
    #[serde(rename = "k8sPodNamespace")]
    pub namespace: String,
    #[serde(rename = "k8sPodName")]
    pub name: String,
    #[serde(rename = "k8sPodUID", default)]
    pub uid: String,
    #[serde(rename = "allocationTimestamp")]
    pub allocation_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointAllocation {
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(rename = "ifName")]
    pub if_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(rename = "allocationTimestamp")]
    pub allocation_timestamp: i64,
    #[serde(default, skip_serializing_if = "CheckpointMetadata::is_empty")]
    pub metadata: CheckpointMetadata,
    /// Ours: for an allocation rebuilt from host state, the 11-hex suffix of its host veth.
    #[serde(
        rename = "hostVethHash",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub host_veth_hash: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    #[serde(
        rename = "k8sPodNamespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub pod_namespace: String,
    #[serde(
        rename = "k8sPodName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub pod_name: String,
    #[serde(rename = "interfacesCount", default, skip_serializing_if = "is_zero")]
    pub interfaces_count: u32,
}

impl CheckpointMetadata {
    fn is_empty(&self) -> bool {
        self.pod_namespace.is_empty() && self.pod_name.is_empty() && self.interfaces_count == 0
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedAddress {
    pub ipv4: Ipv4Addr,
    /// Unix nanoseconds, like allocationTimestamp.
    #[serde(rename = "releaseTimestamp")]
    pub release_timestamp: i64,
}

impl CheckpointFile {
    pub fn new() -> Self {
        CheckpointFile {
            version: VERSION.into(),
            allocations: vec![],
            recently_released: vec![],
            branch_enis: vec![],
        }
    }
}

impl Default for CheckpointFile {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the datastore persists itself; a fake in unit tests, [`JsonFile`] in the daemon.
pub trait CheckpointStore: Send {
    fn save(&mut self, data: &CheckpointFile) -> Result<(), CheckpointError>;
}

/// What was found on disk at start-up.
#[derive(Debug)]
pub enum Loaded {
    /// No file: a fresh node, or the file was deleted.
    Missing,
    Found(CheckpointFile),
    /// Unreadable or not JSON; already moved aside so the next write starts clean.
    Corrupt(CheckpointError),
}

/// The checkpoint as a JSON file, replaced atomically on every save.
#[derive(Debug)]
pub struct JsonFile {
    path: PathBuf,
}

impl JsonFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file. Only an unknown version is an error: a newer format must not be
    /// silently overwritten; anything unparsable is set aside and reported as corrupt.
    pub fn load(&self) -> Result<Loaded, CheckpointError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(source) => return Ok(Loaded::Corrupt(self.set_aside(source.to_string()))),
        };
        let data: CheckpointFile = match serde_json::from_slice(&bytes) {
            Ok(data) => data,
            Err(e) => return Ok(Loaded::Corrupt(self.set_aside(e.to_string()))),
        };
        if data.version != VERSION {
            return Err(CheckpointError::UnknownVersion {
                path: self.path.clone(),
                version: data.version,
            });
        }
        Ok(Loaded::Found(data))
    }

    /// Renames a corrupt file to `<name>.corrupt-<unix-seconds>` so it can be inspected.
    fn set_aside(&self, reason: String) -> CheckpointError {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut moved = self.path.clone().into_os_string();
        moved.push(format!(".corrupt-{secs}"));
        let moved_to = PathBuf::from(moved);
        match fs::rename(&self.path, &moved_to) {
            Ok(()) => CheckpointError::Corrupt {
                path: self.path.clone(),
                reason,
                moved_to,
            },
            Err(source) => CheckpointError::CorruptStuck {
                path: self.path.clone(),
                reason,
                source,
            },
        }
    }

    fn write_atomically(&self, bytes: &[u8]) -> io::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir)?;
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);

        // write + fsync the new content before it replaces the old, then fsync the directory
        // so the rename itself survives a power cut (rename(2) is atomic, not durable).
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl CheckpointStore for JsonFile {
    fn save(&mut self, data: &CheckpointFile) -> Result<(), CheckpointError> {
        let bytes = serde_json::to_vec(data).expect("checkpoint serialises");
        self.write_atomically(&bytes)
            .map_err(|source| CheckpointError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

pub fn to_unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

pub fn from_unix_nanos(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckpointFile {
        CheckpointFile {
            version: VERSION.into(),
            allocations: vec![CheckpointAllocation {
                network_name: "aws-cni".into(),
                container_id: "c-aaaa".into(),
                if_name: "eth0".into(),
                ipv4: Some("10.0.0.21".parse().unwrap()),
                allocation_timestamp: 1_700_000_000_123_456_789,
                metadata: CheckpointMetadata {
                    pod_namespace: "ns1".into(),
                    pod_name: "pod-a".into(),
                    interfaces_count: 1,
                },
                host_veth_hash: None,
            }],
            recently_released: vec![ReleasedAddress {
                ipv4: "10.0.0.28".parse().unwrap(),
                release_timestamp: 1_700_000_001_000_000_000,
            }],
            branch_enis: vec![CheckpointBranch {
                eni_id: "eni-0b1".into(),
                vlan_id: 3,
                mac: "02:5e:aa:10:20:30".into(),
                ipv4: "10.0.0.40".parse().unwrap(),
                subnet_cidr: "10.0.0.0/24".parse().unwrap(),
                association_id: "trunk-assoc-1".into(),
                security_groups: vec!["sg-catalog".into()],
                pod: Some(CheckpointBranchPod {
                    network_name: "aws-cni".into(),
                    container_id: "c-bbbb".into(),
                    if_name: "eth0".into(),
                    namespace: "shop".into(),
                    name: "catalog-0".into(),
                    uid: "uid-1".into(),
                    allocation_timestamp: 1_700_000_002_000_000_000,
                }),
                release_timestamp: None,
            }],
        }
    }

    #[test]
    fn reads_aws_node_format() {
        let text = r#"{"version":"vpc-cni-ipam/1","allocations":[{"networkName":"aws-cni",
            "containerID":"abc","ifName":"eth0","ipv4":"10.0.1.5",
            "allocationTimestamp":1690000000000000000,
            "metadata":{"k8sPodNamespace":"ns","k8sPodName":"name","interfacesCount":1}}]}"#;
        let data: CheckpointFile = serde_json::from_str(text).unwrap();
        assert_eq!(data.allocations[0].ipv4, Some("10.0.1.5".parse().unwrap()));
        assert_eq!(data.allocations[0].metadata.pod_name, "name");
        assert!(data.recently_released.is_empty());
    }

    #[test]
    fn writes_field_names_aws_node_reads() {
        let value = serde_json::to_value(sample()).unwrap();
        let alloc = &value["allocations"][0];
        assert_eq!(value["version"], "vpc-cni-ipam/1");
        assert_eq!(alloc["containerID"], "c-aaaa");
        assert_eq!(alloc["allocationTimestamp"], 1_700_000_000_123_456_789i64);
        assert_eq!(alloc["metadata"]["k8sPodNamespace"], "ns1");
        assert!(alloc.get("hostVethHash").is_none());
        assert_eq!(value["recentlyReleased"][0]["ipv4"], "10.0.0.28");
        let branch = &value["branchEnis"][0];
        assert_eq!(branch["eniId"], "eni-0b1");
        assert_eq!(branch["vlanId"], 3);
        assert_eq!(branch["pod"]["k8sPodUID"], "uid-1");
        assert!(branch.get("releaseTimestamp").is_none());
    }

    #[test]
    fn files_without_branches_still_read() {
        let text = r#"{"version":"vpc-cni-ipam/1","allocations":[]}"#;
        let data: CheckpointFile = serde_json::from_str(text).unwrap();
        assert!(data.branch_enis.is_empty());
        let written = serde_json::to_value(CheckpointFile::new()).unwrap();
        assert!(written.get("branchEnis").is_none());
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = JsonFile::new(dir.path().join("ipam.json"));
        file.save(&sample()).unwrap();
        match file.load().unwrap() {
            Loaded::Found(data) => assert_eq!(data, sample()),
            other => panic!("expected the saved checkpoint, got {other:?}"),
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["ipam.json"]);
    }

    #[test]
    fn missing_file_is_a_fresh_node() {
        let dir = tempfile::tempdir().unwrap();
        let file = JsonFile::new(dir.path().join("ipam.json"));
        assert!(matches!(file.load().unwrap(), Loaded::Missing));
    }

    #[test]
    fn unknown_version_is_an_error_and_the_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        fs::write(&path, r#"{"version":"vpc-cni-ipam/9","allocations":[]}"#).unwrap();
        let err = JsonFile::new(&path).load().unwrap_err();
        assert!(
            matches!(err, CheckpointError::UnknownVersion { .. }),
            "{err}"
        );
        assert!(path.exists());
    }

    #[test]
    fn corrupt_files_are_moved_aside_with_their_content() {
        for content in ["", "{\"version\":\"vpc-cni-ipam/1\",\"alloca"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ipam.json");
            fs::write(&path, content).unwrap();
            let Loaded::Corrupt(CheckpointError::Corrupt { moved_to, .. }) =
                JsonFile::new(&path).load().unwrap()
            else {
                panic!("{content:?} must be reported corrupt");
            };
            assert!(!path.exists());
            assert!(moved_to
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("ipam.json.corrupt-"));
            assert_eq!(fs::read_to_string(moved_to).unwrap(), content);
        }
    }

    #[test]
    fn failed_write_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let mut file = JsonFile::new(&path);
        file.save(&sample()).unwrap();

        // A directory where the temp file must go makes File::create fail (EISDIR), the same
        // path as ENOSPC or EROFS would take.
        fs::create_dir(dir.path().join("ipam.json.tmp")).unwrap();
        let err = file.save(&CheckpointFile::new()).unwrap_err();
        assert!(matches!(err, CheckpointError::Write { .. }), "{err}");
        let Loaded::Found(data) = file.load().unwrap() else {
            panic!("previous file lost")
        };
        assert_eq!(data, sample());
    }

    #[test]
    fn unix_nanos_round_trip() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(from_unix_nanos(to_unix_nanos(t)), t);
    }
}
