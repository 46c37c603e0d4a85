//! Registry pulls (`ros::runtime::pull`) against a real registry — Debian's `docker-registry`
//! on 127.0.0.1, started here with a temp storage dir (`ros_tests::registry`) — into the
//! image's own containerd, started privately by `xtask::hostctr`. The console image is built
//! through the xtask library (as `runtime_containerd.rs` does) and pushed with `skopeo copy`.
//!
//! Needs root (hostctr) and `docker-registry`, `skopeo`, `htpasswd` (scripts/lib/common.sh
//! installs them). Skipped, loudly, when not root. All traffic stays on loopback.

use ros::config::schema::Registry;
use ros::config::secret::Secret;
use ros::runtime::daemon;
use ros::runtime::pull::PullError;
use ros::runtime::Client;
use ros_tests::registry::{free_port, TestRegistry};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use xtask::hostctr::HostContainerd;

mod common;

use common::is_root;

const NS: &str = "user";

/// A private containerd and the console archive, built into its scratch directory.
fn fixture() -> (HostContainerd, PathBuf) {
    let (ctr, mut archives) = common::containerd_with_archives(&["console"]);
    let path = archives.remove("console").unwrap();
    (ctr, path)
}

async fn connect(ctr: &HostContainerd) -> Client {
    daemon::wait_ready(&ctr.address(), Duration::from_secs(10))
        .await
        .unwrap();
    Client::connect(&ctr.address(), NS).await.unwrap()
}

/// Checks what a person would: the record is listed, `ctr images check` calls it complete, and
/// its top snapshot is there.
async fn assert_unpacked(client: &Client, ctr: &HostContainerd, name: &str) {
    let names = ctr.ctr_ok(NS, &["images", "ls", "-q"]).unwrap();
    assert!(
        names.lines().any(|l| l.trim() == name),
        "{name} in:\n{names}"
    );
    let check = ctr.ctr_ok(NS, &["images", "check"]).unwrap();
    let line = check
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default();
    assert!(line.contains("complete"), "{check}");
    let info = client.image_info(name).await.unwrap();
    assert_eq!(info.config.entrypoint, ["/usr/lib/ros/console"]);
    let snaps = ctr.ctr_ok(NS, &["snapshots", "ls"]).unwrap();
    assert!(snaps.contains(&info.chain_id), "{snaps}");
}

#[tokio::test]
async fn test_pull_plain_registry_present_skip_mirror_and_unreachable() {
    if !is_root() {
        return;
    }
    let t0 = Instant::now();
    let (ctr, archive) = fixture();
    let reg = TestRegistry::start(None).unwrap();
    reg.push(&archive, "ros/console:1").unwrap();
    let client = connect(&ctr).await;
    let none = BTreeMap::new();

    // A loopback registry is plain HTTP without any [registries] entry (as Docker does).
    let image = format!("{}/ros/console:1", reg.host());
    let t = Instant::now();
    let pulled = client.pull(&image, &none).await.unwrap();
    eprintln!(
        "pull from {}: {:.2}s",
        reg.host(),
        t.elapsed().as_secs_f32()
    );
    assert_eq!(pulled.name, image);
    assert_eq!(pulled.endpoint.as_deref(), Some(reg.host().as_str()));
    assert!(!pulled.imported.already_present);
    assert_eq!(pulled.imported.blobs_written, 3, "layer, config, manifest");
    assert_eq!(pulled.imported.layers_unpacked, 1);
    assert_unpacked(&client, &ctr, &image).await;

    // Present: nothing is asked of any registry (the registry is gone and it still works).
    let again = client.pull(&image, &none).await.unwrap();
    assert!(again.imported.already_present);
    assert_eq!(again.endpoint, None);

    // A multi-platform index (arm64 listed first) resolves to its linux/amd64 manifest; the
    // record targets the index, as `ctr pull` does.
    let (status, manifest) = reg.get_manifest("ros/console", "1").unwrap();
    assert_eq!(status, 200);
    let media: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let media = media["mediaType"].as_str().unwrap().to_owned();
    let entry = |arch: &str| {
        serde_json::json!({"mediaType": media, "digest": pulled.imported.digest,
            "size": manifest.len(), "platform": {"os": "linux", "architecture": arch}})
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm64"), entry("amd64")],
    }))
    .unwrap();
    let put = reg
        .put_manifest(
            "ros/console",
            "multi",
            "application/vnd.oci.image.index.v1+json",
            &index,
        )
        .unwrap();
    assert_eq!(put, 201, "{}", reg.log());
    let multi = format!("{}/ros/console:multi", reg.host());
    let pulled_multi = client.pull(&multi, &none).await.unwrap();
    let index_digest = format!(
        "sha256:{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(&index)
    );
    assert_eq!(pulled_multi.imported.digest, index_digest);
    assert_eq!(
        pulled_multi.imported.blobs_written, 1,
        "only the index is new"
    );
    assert_unpacked(&client, &ctr, &multi).await;
    let content = ctr.ctr_ok(NS, &["content", "ls"]).unwrap();
    let index_line = content
        .lines()
        .find(|l| l.starts_with(&index_digest))
        .unwrap_or_else(|| panic!("{content}"));
    assert!(
        index_line.contains(&format!(
            "containerd.io/gc.ref.content.m.1={}",
            pulled.imported.digest
        )),
        "{index_line}"
    );

    // Through a mirror: example.invalid is never contacted (its mirror answers first).
    let mirrored = BTreeMap::from([(
        "example.invalid".to_owned(),
        Registry {
            mirrors: vec![reg.host()],
            ..Registry::default()
        },
    )]);
    let pulled = client
        .pull("example.invalid/ros/console:1", &mirrored)
        .await
        .unwrap();
    assert_eq!(pulled.name, "example.invalid/ros/console:1");
    assert_eq!(pulled.endpoint.as_deref(), Some(reg.host().as_str()));
    assert_eq!(
        (
            pulled.imported.blobs_written,
            pulled.imported.layers_unpacked
        ),
        (0, 0),
        "the content and snapshot are shared with the first pull"
    );
    assert_unpacked(&client, &ctr, "example.invalid/ros/console:1").await;
    let log = reg.log();
    assert!(
        log.contains("ns=example.invalid") || log.contains("/v2/ros/console/manifests/1"),
        "the mirror served it:\n{log}"
    );

    // Nothing listens: the error names the reference and every endpoint with its failure.
    let (dead_mirror, dead) = (free_port(), free_port());
    let unreachable = BTreeMap::from([(
        format!("127.0.0.1:{dead}"),
        Registry {
            mirrors: vec![format!("127.0.0.1:{dead_mirror}")],
            ..Registry::default()
        },
    )]);
    let reference = format!("127.0.0.1:{dead}/ros/none:1");
    let err = client.pull(&reference, &unreachable).await.unwrap_err();
    let text = err.to_string();
    eprintln!("unreachable: {text}");
    assert!(matches!(err, PullError::Registries { ref attempts, .. } if attempts.len() == 2));
    assert!(text.starts_with(&format!("pull {reference}: ")), "{text}");
    let mirror_at = text
        .find(&format!("mirror 127.0.0.1:{dead_mirror}: "))
        .unwrap_or_else(|| panic!("{text}"));
    let registry_at = text
        .find(&format!("registry 127.0.0.1:{dead}: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(mirror_at < registry_at, "mirror first: {text}");
    assert!(text.to_lowercase().contains("connection refused"), "{text}");

    // A tag the registry does not have.
    let err = client
        .pull(&format!("{}/ros/console:nope", reg.host()), &none)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("registry {}: ", reg.host())),
        "{err}"
    );

    drop(reg);
    ctr.stop().unwrap();
    eprintln!("pull test: {:.1}s", t0.elapsed().as_secs_f32());
}

#[tokio::test]
async fn test_pull_with_credentials_and_wrong_ones() {
    if !is_root() {
        return;
    }
    let t0 = Instant::now();
    let (ctr, archive) = fixture();
    let password = "s3cret-Pa55word";
    let reg = TestRegistry::start(Some(("ros", password))).unwrap();
    reg.push(&archive, "private/console:2").unwrap();
    let client = connect(&ctr).await;
    let image = format!("{}/private/console:2", reg.host());
    let with = |user: Option<&str>, pw: Option<&str>| {
        BTreeMap::from([(
            reg.host(),
            Registry {
                username: user.map(str::to_owned),
                password: pw.map(Secret::new),
                ..Registry::default()
            },
        )])
    };

    // No credentials.
    let err = client.pull(&image, &with(None, None)).await.unwrap_err();
    let text = err.to_string();
    eprintln!("anonymous: {text}");
    assert!(
        text.starts_with(&format!("pull {image}: registry {}: ", reg.host())),
        "{text}"
    );
    assert!(text.contains("not authorized (HTTP 401)"), "{text}");

    // Wrong password: a clear error that does not contain it (nor the right one).
    let wrong = "wr0ng-Pa55word";
    let err = client
        .pull(&image, &with(Some("ros"), Some(wrong)))
        .await
        .unwrap_err();
    let text = err.to_string();
    eprintln!("wrong password: {text}");
    assert!(
        text.starts_with(&format!("pull {image}: registry {}: ", reg.host())),
        "{text}"
    );
    assert!(text.contains("not authorized (HTTP 401)"), "{text}");
    for secret in [wrong, password] {
        assert!(!text.contains(secret), "{text}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");
    }
    assert!(ctr
        .ctr_ok(NS, &["images", "ls", "-q"])
        .unwrap()
        .trim()
        .is_empty());

    // The right ones.
    let pulled = client
        .pull(&image, &with(Some("ros"), Some(password)))
        .await
        .unwrap();
    assert!(!pulled.imported.already_present);
    assert_eq!(pulled.imported.layers_unpacked, 1);
    assert_unpacked(&client, &ctr, &image).await;

    drop(reg);
    ctr.stop().unwrap();
    eprintln!("credentials test: {:.1}s", t0.elapsed().as_secs_f32());
}
