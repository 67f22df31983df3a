//! The sandbox policy, enforced: unapproved native plugins refused in official
//! mode and warned about in dev mode, a library changed after approval refused,
//! a hook the policy does not approve refused, an op outside a hook's allow-list
//! refused mid-run, malformed files refused naming the field, and the
//! maintainer's CLI (show, check, approve, revoke).

use crate::common;
use common::*;

use speedrun::plugins;
use speedrun::track;
use speedrun::train::{self};
use speedrun_sandbox_policy::LoadedPolicy;
use std::path::{Path, PathBuf};

fn default_text() -> String {
    std::fs::read_to_string(root().join("sandbox-policy/default.toml")).unwrap()
}

/// A policy file in `dir`: the default one, edited by `edit`.
fn policy_file(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, edit(default_text())).unwrap();
    p
}

fn official(text: String) -> String {
    text.replace("mode = \"dev\"", "mode = \"official\"")
}

/// The policy without its native allow-list.
fn no_natives(text: String) -> String {
    match text.find("\n[[native]]") {
        Some(i) => text[..i + 1].to_string(),
        None => text,
    }
}

fn stack_err(policy: &Path, plugin: &str) -> String {
    let lp = LoadedPolicy::load(policy).unwrap();
    let track = track::load("smoke").unwrap().track;
    match plugins::stack(&track, 0, &[root().join(plugin)], &[], false, &lp) {
        Ok(_) => panic!("{plugin} was admitted by {}", policy.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn unapproved_native_plugins_are_refused_in_official_mode_and_flagged_in_dev_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let strict = policy_file(tmp.path(), "official.toml", official);
    // A plugin the default policy does not list (the reference ones are listed).
    let err = stack_err(&strict, "tests/fixtures/panicking-plugin");
    assert!(
        err.contains("refused by policy") && err.contains("official.toml"),
        "{err}"
    );
    assert!(
        err.contains("native plugin panicking-plugin is not on the allow-list"),
        "{err}"
    );

    // Dev mode: it runs, and the run says it is unofficial and why.
    let dev = policy_file(tmp.path(), "dev.toml", |t| t);
    let out = tmp.path().join("run");
    let o = speedrun(&[
        "run",
        "--track",
        "smoke",
        "--steps",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--policy",
        dev.to_str().unwrap(),
        "--plugin",
        root()
            .join("tests/fixtures/panicking-plugin")
            .to_str()
            .unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("UNOFFICIAL"), "{t}");
    let m = manifest(&out);
    assert_eq!(m["official"], false);
    assert_eq!(m["policy"]["mode"], "dev");
    assert_eq!(m["policy"]["sha256"].as_str().unwrap().len(), 64);
    assert!(m["policy"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("not on the allow-list"));
}

#[test]
fn approval_admits_a_plugin_until_its_library_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = policy_file(tmp.path(), "p.toml", |t| no_natives(official(t)));
    // A private copy of the built library, so changing it touches nothing shared.
    let built = speedrun(&[
        "plugin",
        "build",
        root().join("plugins/cosine-schedule").to_str().unwrap(),
    ]);
    let lib = tmp
        .path()
        .join(format!("libcosine{}", std::env::consts::DLL_SUFFIX));
    std::fs::copy(String::from_utf8_lossy(&built.stdout).trim(), &lib).unwrap();
    let (lib_s, pol_s) = (lib.to_str().unwrap(), policy.to_str().unwrap());

    let check = speedrun(&["policy", "check", lib_s, "--policy", pol_s]);
    assert!(
        !check.status.success(),
        "check passed an unapproved plugin: {}",
        text(&check)
    );

    let approve = speedrun(&[
        "policy",
        "approve",
        lib_s,
        "--by",
        "test-maintainer",
        "--policy",
        pol_s,
    ]);
    assert!(approve.status.success(), "{}", text(&approve));
    let check = speedrun(&["policy", "check", lib_s, "--policy", pol_s]);
    assert!(check.status.success(), "{}", text(&check));
    let show = text(&speedrun(&["policy", "show", "--policy", pol_s]));
    assert!(
        show.contains("native cosine-schedule 0.1.0") && show.contains("test-maintainer"),
        "{show}"
    );

    // An approved plugin runs officially.
    let out = tmp.path().join("run");
    let o = speedrun(&[
        "run",
        "--track",
        "smoke",
        "--steps",
        "2",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--policy",
        pol_s,
        "--plugin",
        lib_s,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(manifest(&out)["official"], true);

    // The library changes after approval: refused, naming the hash rule.
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&lib, bytes).unwrap();
    let o = speedrun(&[
        "run",
        "--track",
        "smoke",
        "--steps",
        "2",
        "--quiet",
        "--out",
        tmp.path().join("run2").to_str().unwrap(),
        "--policy",
        pol_s,
        "--plugin",
        lib_s,
    ]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("changed after approval") && t.contains("native.sha256"),
        "{t}"
    );

    // Revoking removes the entry.
    let r = speedrun(&["policy", "revoke", "cosine-schedule", "--policy", pol_s]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(!std::fs::read_to_string(&policy)
        .unwrap()
        .contains("test-maintainer"));
    let r = speedrun(&["policy", "revoke", "cosine-schedule", "--policy", pol_s]);
    assert!(!r.status.success());
}

#[test]
fn a_hook_the_policy_does_not_approve_is_refused_and_cannot_be_approved() {
    let tmp = tempfile::tempdir().unwrap();
    let no_schedule = policy_file(tmp.path(), "p.toml", |t| {
        t.replace(
            "[hooks.schedule]\ntransports = [\"native\", \"wasm\"]\nops = [\"*\"]\n",
            "",
        )
    });
    let err = stack_err(&no_schedule, "plugins/cosine-schedule");
    assert!(
        err.contains("hook schedule is not approved for replacement"),
        "{err}"
    );
    assert!(err.contains("p.toml"), "{err}");

    let o = speedrun(&[
        "policy",
        "approve",
        root().join("plugins/cosine-schedule").to_str().unwrap(),
        "--by",
        "x",
        "--policy",
        no_schedule.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("refusing to approve cosine-schedule"),
        "{t}"
    );
}

#[test]
fn an_op_outside_the_hooks_allow_list_is_refused_mid_run() {
    let tmp = tempfile::tempdir().unwrap();
    let narrow = policy_file(tmp.path(), "narrow.toml", |t| {
        t.replace(
            "[hooks.\"optimizer.step\"]\ntransports = [\"native\", \"wasm\"]\nops = [\"*\"]",
            "[hooks.\"optimizer.step\"]\ntransports = [\"native\", \"wasm\"]\nops = [\"assign\"]",
        )
    });
    let lp = LoadedPolicy::load(&narrow).unwrap();
    let track = track::load("smoke").unwrap().track;
    let comps =
        plugins::stack(&track, 0, &[root().join("plugins/adamw")], &[], false, &lp).unwrap();
    let out = tmp.path().join("run");
    let err = format!(
        "{:#}",
        train::run(&smoke_options(&out, Some(3)), comps).unwrap_err()
    );
    assert!(err.contains("plugin adamw, hook optimizer.step"), "{err}");
    assert!(
        err.contains("op adamw_update is not in hook optimizer.step's allow-list"),
        "{err}"
    );
    assert!(
        err.contains("narrow.toml") && err.contains("rule hooks.\"optimizer.step\".ops"),
        "{err}"
    );
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("failed"), "{summary}");
}

#[test]
fn malformed_policy_files_are_refused_naming_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, edit, needle) in [
        (
            "unknown.toml",
            "mode = \"dev\"\nsurprise = true",
            "surprise",
        ),
        (
            "limit.toml",
            "max_live_handles = 0",
            "wasm.max_live_handles = 0 is outside",
        ),
        ("negative.toml", "memory_pages = -5", "memory_pages"),
    ] {
        let f = policy_file(tmp.path(), name, |t| {
            if edit.starts_with("mode") {
                t.replace("mode = \"dev\"", edit)
            } else {
                let key = edit.split(' ').next().unwrap();
                let line = t.lines().find(|l| l.starts_with(key)).unwrap().to_string();
                t.replace(&line, edit)
            }
        });
        let o = speedrun(&["policy", "show", "--policy", f.to_str().unwrap()]);
        let t = text(&o);
        assert!(!o.status.success(), "{name} accepted");
        assert!(t.contains(name) && t.contains(needle), "{name}: {t}");
    }
    let f = tmp.path().join("badhash.toml");
    std::fs::write(
        &f,
        format!(
            "{}\n[[native]]\nname = \"x\"\nversion = \"1\"\nsha256 = \"not-a-hash\"\nhooks = []\napproved_by = \"m\"\napproved_at = \"2026-01-01T00:00:00Z\"\n",
            default_text()
        ),
    )
    .unwrap();
    let t = text(&speedrun(&[
        "policy",
        "show",
        "--policy",
        f.to_str().unwrap(),
    ]));
    assert!(
        t.contains("badhash.toml") && t.contains("(x).sha256: expected 64 hex digits"),
        "{t}"
    );
}

#[test]
fn the_default_policy_admits_the_reference_plugins_officially() {
    // Native builds remap paths, so the committed hashes hold for any checkout
    // built with this toolchain; after a toolchain change, re-approve them with
    // `speedrun policy approve plugins/NAME --by ...`.
    let tmp = tempfile::tempdir().unwrap();
    let strict = policy_file(tmp.path(), "official.toml", official);
    for p in ["plugins/adamw", "plugins/cosine-schedule", "plugins/relu2"] {
        let o = speedrun(&[
            "policy",
            "check",
            root().join(p).to_str().unwrap(),
            "--policy",
            strict.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{p}: {}", text(&o));
    }
}
