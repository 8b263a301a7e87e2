//! Container image archives written without a container engine.
//!
//! One image of one uncompressed layer, as a tar that is at once an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`) and a docker-archive (`manifest.json` naming
//! the same blobs), the shape `docker save` has written since Docker 25: `ctr images import`
//! reads the index, `docker load` and `podman load` the manifest. Every entry is owned by root
//! and dated at the epoch, so the same files give the same bytes.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// One entry of the image's file system (paths relative, without a leading `/`).
pub enum Entry<'a> {
    Dir(&'a str),
    /// Path, contents, mode.
    File(&'a str, Vec<u8>, u32),
    /// Path, target.
    Symlink(&'a str, &'a str),
}

/// What to write.
pub struct Image<'a> {
    /// The reference, `podtrace:0.1.0` or `registry.k8s.io/pause:3.9`.
    pub name: &'a str,
    pub entries: Vec<Entry<'a>>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: Vec<(String, String)>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The name runtimes give the image: `docker.io/library/podtrace:0.1.0`.
    pub full_name: String,
    /// The manifest's digest, `sha256:…`.
    pub manifest_digest: String,
    /// The image id (its config's digest), `sha256:…`.
    pub config_digest: String,
}

/// Writes `image` as an archive at `out`.
///
/// # Errors
///
/// An entry that tar cannot hold, or writing `out`.
pub fn write(image: &Image<'_>, out: &Path) -> Result<Written> {
    let layer = tar_of(&image.entries)?;
    let layer_digest = digest(&layer);
    let labels: serde_json::Map<String, serde_json::Value> = image
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let config = json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": image.entrypoint,
            "Cmd": image.cmd,
            "Env": image.env,
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    })
    .to_string()
    .into_bytes();
    let config_digest = digest(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer.len() }],
    })
    .to_string()
    .into_bytes();
    let manifest_digest = digest(&manifest);
    let full_name = full_name(image.name);
    let tag = image.name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": full_name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    })
    .to_string()
    .into_bytes();
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let docker_manifest = json!([{
        "Config": blob(&config_digest),
        "RepoTags": [image.name],
        "Layers": [blob(&layer_digest)],
    }])
    .to_string()
    .into_bytes();
    let archive = tar_of(&[
        Entry::File(
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            0o644,
        ),
        Entry::File("index.json", index, 0o644),
        Entry::File("manifest.json", docker_manifest, 0o644),
        Entry::Dir("blobs"),
        Entry::Dir("blobs/sha256"),
        Entry::File(&blob(&layer_digest), layer, 0o644),
        Entry::File(&blob(&config_digest), config, 0o644),
        Entry::File(&blob(&manifest_digest), manifest, 0o644),
    ])?;
    std::fs::write(out, archive).with_context(|| format!("writing {}", out.display()))?;
    Ok(Written {
        full_name,
        manifest_digest,
        config_digest,
    })
}

/// The name as containerd and the kubelet spell it: `podtrace:1` → `docker.io/library/podtrace:1`.
pub fn full_name(name: &str) -> String {
    let first = name.split('/').next().unwrap_or_default();
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    match (has_domain, name.contains('/')) {
        (true, _) => name.to_string(),
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    }
}

fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// A tar of the entries, owned by root, dated at the epoch.
fn tar_of(entries: &[Entry<'_>]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty())?;
            }
            Entry::File(path, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// The Go architecture name OCI configs use.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_names_like_the_kubelet() {
        assert_eq!(
            full_name("podtrace:0.1.0"),
            "docker.io/library/podtrace:0.1.0"
        );
        assert_eq!(full_name("me/podtrace:1"), "docker.io/me/podtrace:1");
        assert_eq!(
            full_name("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        assert_eq!(
            full_name("localhost/podtrace-test/busybox:1"),
            "localhost/podtrace-test/busybox:1"
        );
        assert_eq!(full_name("localhost:5000/x:1"), "localhost:5000/x:1");
    }

    #[test]
    fn archive_is_an_oci_layout_and_a_docker_archive() {
        let dir = std::env::temp_dir().join(format!("oci-archive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("i.tar");
        let image = Image {
            name: "podtrace:9",
            entries: vec![
                Entry::Dir("bin"),
                Entry::File("bin/x", b"hi".to_vec(), 0o755),
            ],
            entrypoint: vec!["/bin/x".into()],
            cmd: vec![],
            env: vec!["PATH=/bin".into()],
            labels: vec![],
        };
        let written = write(&image, &out).unwrap();
        let again = write(&image, &dir.join("j.tar")).unwrap();
        assert_eq!(written, again, "same files, same digests");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(dir.join("j.tar")).unwrap()
        );
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut files = std::collections::HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            files.insert(path, data);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let json = |p: &str| serde_json::from_slice::<serde_json::Value>(&files[p]).unwrap();
        let index = json("index.json");
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            "docker.io/library/podtrace:9"
        );
        assert_eq!(
            index["manifests"][0]["digest"],
            written.manifest_digest.as_str()
        );
        let docker = json("manifest.json");
        assert_eq!(docker[0]["RepoTags"][0], "podtrace:9");
        // Every blob is named by its own digest.
        for (path, data) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                if !hex.is_empty() {
                    assert_eq!(digest(data), format!("sha256:{hex}"), "{path}");
                }
            }
        }
        let config = json(docker[0]["Config"].as_str().unwrap());
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/x");
    }
}
