//! What the plugin writes on stdout besides a result: the VERSION answer and the error object.

use serde::Serialize;

use super::version::{self, Version};

/// CNI error codes. 1–99 are the spec's; 100 and up are this plugin's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// ipamd answered with something the plugin cannot use (version mismatch, bad reply, an
    /// RPC error that is not transient).
    pub const IPAMD: u32 = 100;
    /// Wiring the pod failed; whatever was done was undone and the address released.
    pub const SETUP: u32 = 101;
    /// Some teardown step failed; the others were still done.
    pub const TEARDOWN: u32 = 102;
    /// CHECK found live state different from prevResult.
    pub const CHECK_MISMATCH: u32 = 103;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReply {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

impl VersionReply {
    /// Echoes the requested version as the spec asks; an unknown or absent one is answered
    /// in the newest version (VERSION exists so a runtime can find out what to use).
    pub fn new(requested: Option<&str>) -> VersionReply {
        let cni_version = match requested {
            Some(v) if v.parse::<Version>().is_ok() => v.to_string(),
            _ => version::LATEST.to_string(),
        };
        VersionReply {
            cni_version,
            supported_versions: version::supported_strings(),
        }
    }
}
