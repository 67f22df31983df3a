//! What a plugin says about itself (`speedrun plugin inspect` prints it, the run
//! manifest records it), and which API versions a host accepts.

use crate::HookPoint;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A version of the author API (the SDK crate's major.minor). Minor versions
/// only add: hooks, ops, helpers. So a host accepts every plugin of its major
/// version up to its own minor, and refuses a newer minor (it may call what the
/// host lacks) and any other major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

/// The API version this build speaks. See the SDK's `CHANGELOG.md` for what
/// each minor added and `docs/plugins.md` for which host accepts which.
pub const API_VERSION: ApiVersion = ApiVersion { major: 1, minor: 1 };

impl ApiVersion {
    /// Whether a host speaking `self` runs a plugin built for `plugin`; the
    /// error says why not, for a person.
    pub fn accepts(self, plugin: ApiVersion) -> Result<(), String> {
        if plugin.major != self.major {
            return Err(format!(
                "it was built for plugin API {plugin}, this host speaks {self} \
                 (it runs plugins built for {}.0 to {self}): rebuild it against \
                 speedrun-plugin-api {}.x",
                self.major, self.major
            ));
        }
        if plugin.minor > self.minor {
            return Err(format!(
                "it was built for plugin API {plugin}, newer than this host's {self}: \
                 update speedrun, or build the plugin against speedrun-plugin-api {self}"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// The major API version it was built against. Named as in 1.0, whose
    /// manifests carry no minor.
    pub api_version: u32,
    /// The minor API version (absent in 1.0 manifests: 0).
    #[serde(default)]
    pub api_minor: u32,
    /// Dotted hook names it provides.
    pub hooks: Vec<String>,
    /// Every configuration key it accepts, with its default.
    pub config: serde_json::Value,
}

impl Manifest {
    pub fn api(&self) -> ApiVersion {
        ApiVersion {
            major: self.api_version,
            minor: self.api_minor,
        }
    }

    /// Whether a host speaking `host` may load this plugin: its API version is
    /// accepted, and each hook it lists exists and is no newer than that version
    /// (a manifest that claims 1.0 and a 1.1 hook is not what the SDK writes).
    pub fn check_api(&self, host: ApiVersion) -> Result<(), String> {
        host.accepts(self.api())?;
        for name in &self.hooks {
            let Some(hook) = HookPoint::from_name(name) else {
                return Err(format!(
                    "it lists hook {name}, which plugin API {host} does not have"
                ));
            };
            if hook.since() > self.api() {
                return Err(format!(
                    "it lists hook {name}, added in plugin API {}, but says it was built for {}",
                    hook.since(),
                    self.api()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32) -> ApiVersion {
        ApiVersion { major, minor }
    }

    #[test]
    fn a_host_runs_its_major_up_to_its_minor() {
        let host = v(1, 1);
        assert!(host.accepts(v(1, 0)).is_ok());
        assert!(host.accepts(v(1, 1)).is_ok());
        let newer = host.accepts(v(1, 2)).unwrap_err();
        assert!(newer.contains("newer than this host's 1.1"), "{newer}");
        for other in [v(0, 1), v(2, 0)] {
            let e = host.accepts(other).unwrap_err();
            assert!(
                e.contains("rebuild it against speedrun-plugin-api 1.x"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_1_0_manifest_reads_as_1_0_and_may_not_list_later_hooks() {
        let old: Manifest = serde_json::from_str(
            r#"{"name":"relu2","version":"0.1.0","api_version":1,"hooks":["model.mlp"],"config":{}}"#,
        )
        .unwrap();
        assert_eq!(old.api(), v(1, 0));
        assert!(old.check_api(API_VERSION).is_ok());
        let mut liar = old.clone();
        liar.hooks.push("model.logits".into());
        let e = liar.check_api(API_VERSION).unwrap_err();
        assert!(e.contains("added in plugin API 1.1"), "{e}");
        liar.api_minor = 1;
        assert!(liar.check_api(API_VERSION).is_ok());
        liar.hooks.push("model.nope".into());
        assert!(liar
            .check_api(API_VERSION)
            .unwrap_err()
            .contains("model.nope"));
    }
}
