//! What a plugin says about itself; `speedrun plugin inspect` prints it and the
//! run manifest records it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// The plugin-API version it was built against ([`crate::PLUGIN_API_VERSION`]).
    pub api_version: u32,
    /// Dotted hook names it provides.
    pub hooks: Vec<String>,
    /// Every configuration key it accepts, with its default.
    pub config: serde_json::Value,
}
