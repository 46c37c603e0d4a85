//! Images into a containerd namespace through the content, snapshots, diff and images services,
//! done the way `ctr images import` does it: from OCI image-layout archives (`*.oci.tar`, as
//! `xtask/src/oci.rs` builds them) here, and from registries through the same [`Client::store`]
//! (`pull.rs` supplies the blobs); and reading an image's config back.
//!
//! Owns: the archive reader (a tar index of offsets, blobs streamed from the file in
//! [`CHUNK`]-sized pieces, well under containerd's 16 MiB message limit), the blob writes from
//! any [`BlobSource`] (skipped for blobs the content store already has), the garbage-collection
//! labels (index → chosen manifest, manifest → config and layers, layer → uncompressed digest,
//! config → unpacked snapshot), the unpack (one committed overlayfs snapshot per layer, named by
//! its chain ID) and the image record. Work in progress is protected by a containerd lease,
//! released at the end. Logs `IMAGE: layer i/n SIZE` as each layer is written.
//!
//! "Already present" means: an image record of that name already targets the same digest and
//! its top snapshot exists. Then nothing is written and nothing unpacked.
//!
//! Must not: talk to registries (`pull` does), run containers, or spawn processes. Limitations:
//! one image per archive (an explicit name picks it among several), a nested index in an archive
//! is refused, reading the archive is plain blocking file I/O of at most one chunk at a time.

use super::client::{Client, ClientError, Rpc, SNAPSHOTTER};
use super::spec::ImageConfig;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, Info,
    InfoRequest, ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::tonic::{Code, Status};
use containerd_client::types::Descriptor;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes per content write message (containerd refuses messages over 16 MiB).
pub const CHUNK: usize = 1 << 20;
/// Largest index, manifest or config read into memory.
pub(crate) const MAX_JSON: u64 = 4 << 20;
/// How long a lease outlives a ros that died in the middle of an import.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// The annotation that names an image in an archive's `index.json` (containerd's importer and
/// xtask use it).
pub const ANNOTATION_NAME: &str = "io.containerd.image.name";
/// containerd's GC label from a config blob to its unpacked overlayfs snapshot.
pub const LABEL_GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.overlayfs";
const LABEL_GC_CONFIG: &str = "containerd.io/gc.ref.content.config";
const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

pub(crate) const MEDIA_INDEX: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
pub(crate) const MEDIA_MANIFEST: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{archive}: {reason}")]
    Archive { archive: PathBuf, reason: String },
    #[error("{archive}: {source}")]
    Io {
        archive: PathBuf,
        source: std::io::Error,
    },
    #[error("{archive}: blob {digest} has digest {actual}")]
    Digest {
        archive: PathBuf,
        digest: String,
        actual: String,
    },
    #[error("image {image}: {op} {subject}: {source}")]
    Rpc {
        image: String,
        op: &'static str,
        subject: String,
        source: Rpc,
    },
    #[error("image {image}: not found in namespace {namespace}")]
    NotFound { image: String, namespace: String },
    #[error("image {image}: {digest}: {reason}")]
    Content {
        image: String,
        digest: String,
        reason: String,
    },
    #[error("image {image}: layer {digest} unpacked to {actual}, its config says {expected}")]
    DiffId {
        image: String,
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("image {image}: blob {digest}: {reason}")]
    Source {
        image: String,
        digest: String,
        reason: String,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The image's name (`docker.io/ros/console:0.1.0`).
    pub name: String,
    /// The manifest digest the image record targets.
    pub digest: String,
    /// The image was already there: nothing was written or unpacked.
    pub already_present: bool,
    /// Blobs written to the content store (the others were there already).
    pub blobs_written: usize,
    /// Layers unpacked into new snapshots.
    pub layers_unpacked: usize,
}

/// An image as ros runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// The chain ID of the top layer: the snapshot a container's rootfs is prepared from.
    /// Empty for an image without layers.
    pub chain_id: String,
    pub config: ImageConfig,
    /// The image's `StopSignal` (`SIGTERM` when absent is the caller's choice).
    pub stop_signal: Option<String>,
}

/// An OCI content descriptor, as manifests and indexes hold them.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Desc {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) annotations: HashMap<String, String>,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) os: String,
}

/// An image index (`index.json` of an archive, or a registry's manifest list).
#[derive(Debug, Deserialize)]
pub(crate) struct Index {
    pub(crate) manifests: Vec<Desc>,
}

impl Index {
    /// The position and descriptor of the first linux/amd64 manifest.
    pub(crate) fn linux_amd64(&self) -> Option<(usize, &Desc)> {
        self.manifests.iter().enumerate().find(|(_, d)| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) config: Desc,
    pub(crate) layers: Vec<Desc>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConfigBlob {
    pub(crate) rootfs: RootFs,
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub(crate) diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RunConfig {
    #[serde(rename = "StopSignal", default)]
    stop_signal: Option<String>,
}

impl Desc {
    fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

/// `sha256:<64 hex>` → `<64 hex>`, or `None` for anything else (a digest also names a path).
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The chain IDs of layers with these diff IDs (OCI image spec: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// An OCI layout tar, indexed: file name → (offset of its data, size).
pub(crate) struct Archive {
    path: PathBuf,
    file: File,
    entries: HashMap<String, (u64, u64)>,
}

impl Archive {
    pub(crate) fn open(path: &Path) -> Result<Self, ImportError> {
        let io = |source| ImportError::Io {
            archive: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut entries = HashMap::new();
        let mut tar = tar::Archive::new(file.try_clone().map_err(io)?);
        for entry in tar.entries_with_seek().map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").to_owned();
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Archive {
            path: path.to_owned(),
            file,
            entries,
        })
    }

    fn bad(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Archive {
            archive: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn entry(&self, name: &str) -> Result<(u64, u64), ImportError> {
        self.entries
            .get(name)
            .copied()
            .ok_or_else(|| self.bad(format!("no {name}")))
    }

    fn blob_entry(&self, digest: &str) -> Result<(u64, u64), ImportError> {
        let hex =
            sha256_hex(digest).ok_or_else(|| self.bad(format!("unsupported digest `{digest}`")))?;
        self.entry(&format!("blobs/sha256/{hex}"))
    }

    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, ImportError> {
        let mut buf = vec![0u8; len];
        let io = |source| ImportError::Io {
            archive: self.path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
        self.file
            .read_exact(&mut buf)
            .map_err(|source| ImportError::Io {
                archive: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    fn read_small(&mut self, name: &str) -> Result<Vec<u8>, ImportError> {
        let (off, size) = self.entry(name)?;
        if size > MAX_JSON {
            return Err(self.bad(format!("{name}: {size} bytes, more than {MAX_JSON}")));
        }
        self.read_at(off, size as usize)
    }

    /// A JSON blob, checked against its digest.
    fn read_blob_json<T: serde::de::DeserializeOwned>(
        &mut self,
        desc: &Desc,
    ) -> Result<T, ImportError> {
        let hex = sha256_hex(&desc.digest)
            .ok_or_else(|| self.bad(format!("unsupported digest `{}`", desc.digest)))?;
        let bytes = self.read_small(&format!("blobs/sha256/{hex}"))?;
        let actual = sha256_digest(&bytes);
        if actual != desc.digest {
            return Err(ImportError::Digest {
                archive: self.path.clone(),
                digest: desc.digest.clone(),
                actual,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("{}: {e}", desc.digest)))
    }
}

/// One image to store, read and checked before containerd is asked anything (from an archive,
/// or from a registry's manifest and config).
pub(crate) struct Plan {
    /// `import` or `pull`: how progress lines start.
    pub(crate) action: &'static str,
    pub(crate) name: String,
    /// What the image record targets: the manifest, or the index it was chosen from.
    pub(crate) target: Desc,
    /// The manifest's position in the index when `target` is one.
    pub(crate) index_pos: Option<usize>,
    pub(crate) manifest: Desc,
    pub(crate) config: Desc,
    pub(crate) layers: Vec<Desc>,
    pub(crate) diff_ids: Vec<String>,
    pub(crate) chain_ids: Vec<String>,
}

impl Plan {
    /// A plan for `manifest` (with its parsed body and config), checked for a diff ID per layer.
    pub(crate) fn new(
        name: String,
        target: Desc,
        index_pos: Option<usize>,
        manifest: Desc,
        body: Manifest,
        cfg: &ConfigBlob,
    ) -> Result<Self, String> {
        if cfg.rootfs.diff_ids.len() != body.layers.len() {
            return Err(format!(
                "{}: {} layers but {} diff_ids in the config",
                manifest.digest,
                body.layers.len(),
                cfg.rootfs.diff_ids.len()
            ));
        }
        Ok(Plan {
            action: "import",
            name,
            target,
            index_pos,
            manifest,
            config: body.config,
            layers: body.layers,
            diff_ids: cfg.rootfs.diff_ids.clone(),
            chain_ids: chain_ids(&cfg.rootfs.diff_ids),
        })
    }

    /// The same plan, its progress lines starting with `action`.
    pub(crate) fn action(self, action: &'static str) -> Self {
        Plan { action, ..self }
    }

    fn top(&self) -> &str {
        self.chain_ids.last().map_or("", String::as_str)
    }
}

/// Where the bytes of an image's blobs come from: an archive, or a registry.
pub(crate) trait BlobSource: Send {
    /// Up to `len` bytes of blob `desc` from byte `pos` (fewer only at its end). A blob is read
    /// from `pos` 0 on, in order, one blob at a time.
    fn read(
        &mut self,
        image: &str,
        desc: &Desc,
        pos: u64,
        len: usize,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, ImportError>> + Send;
}

impl BlobSource for Archive {
    async fn read(
        &mut self,
        _image: &str,
        desc: &Desc,
        pos: u64,
        len: usize,
    ) -> Result<Vec<u8>, ImportError> {
        let (offset, size) = self.blob_entry(&desc.digest)?;
        if i64::try_from(size).ok() != Some(desc.size) {
            return Err(self.bad(format!(
                "{}: {size} bytes in the archive, {} in its descriptor",
                desc.digest, desc.size
            )));
        }
        let len = usize::try_from(size.saturating_sub(pos))
            .unwrap_or(len)
            .min(len);
        self.read_at(offset + pos, len)
    }
}

pub(crate) fn plan(ar: &mut Archive, name: Option<&str>) -> Result<Plan, ImportError> {
    let index_bytes = ar.read_small("index.json")?;
    let index: Index =
        serde_json::from_slice(&index_bytes).map_err(|e| ar.bad(format!("index.json: {e}")))?;
    if let Some(nested) = index
        .manifests
        .iter()
        .find(|d| MEDIA_INDEX.contains(&d.media_type.as_str()))
    {
        return Err(ar.bad(format!(
            "{}: nested indexes are not supported",
            nested.digest
        )));
    }
    fn named(d: &Desc) -> Option<&str> {
        d.annotations.get(ANNOTATION_NAME).map(String::as_str)
    }
    let chosen: Vec<&Desc> = match name {
        Some(n) if index.manifests.len() > 1 => index
            .manifests
            .iter()
            .filter(|d| named(d) == Some(n))
            .collect(),
        _ => index.manifests.iter().collect(),
    };
    let manifest = match chosen.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(ar.bad(format!("no image {}", name.unwrap_or("in index.json")))),
        _ => return Err(ar.bad(format!("{} images; name the one to import", chosen.len()))),
    };
    if !manifest.media_type.is_empty() && !MEDIA_MANIFEST.contains(&manifest.media_type.as_str()) {
        return Err(ar.bad(format!(
            "{}: unsupported media type {}",
            manifest.digest, manifest.media_type
        )));
    }
    let name = match name.or_else(|| named(&manifest)) {
        Some(n) => n.to_owned(),
        None => {
            return Err(ar.bad(format!(
                "{}: no {ANNOTATION_NAME} annotation and no name given",
                manifest.digest
            )))
        }
    };
    let m: Manifest = ar.read_blob_json(&manifest)?;
    let cfg: ConfigBlob = ar.read_blob_json(&m.config)?;
    for l in &m.layers {
        ar.blob_entry(&l.digest)?;
    }
    Plan::new(name, manifest.clone(), None, manifest, m, &cfg).map_err(|e| ar.bad(e))
}

/// The next `Content.Write` message of blob `desc`: the chunk from `pos`, `Commit` (with the
/// labels) on the last one. Returns it and the position after it.
async fn next_write(
    src: &mut impl BlobSource,
    image: &str,
    desc: &Desc,
    size: u64,
    pos: u64,
    reference: &str,
    labels: &HashMap<String, String>,
) -> Result<(WriteContentRequest, u64), ImportError> {
    let len = usize::try_from(size - pos).unwrap_or(CHUNK).min(CHUNK);
    let data = src.read(image, desc, pos, len).await?;
    if data.len() != len {
        return Err(ImportError::Content {
            image: image.to_owned(),
            digest: desc.digest.clone(),
            reason: format!("ended at byte {}, {size} expected", pos + data.len() as u64),
        });
    }
    let end = pos + len as u64;
    let last = end == size;
    let req = WriteContentRequest {
        action: if last {
            WriteAction::Commit
        } else {
            WriteAction::Write
        } as i32,
        r#ref: reference.to_owned(),
        total: desc.size,
        expected: desc.digest.clone(),
        offset: i64::try_from(pos).unwrap_or(i64::MAX),
        data,
        labels: if last { labels.clone() } else { HashMap::new() },
    };
    Ok((req, end))
}

/// `1.4 MiB`, `512 B`: sizes in progress lines.
pub(crate) fn human_size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    if b < 1024.0 {
        return format!("{bytes} B");
    }
    let mut v = b / 1024.0;
    for unit in ["KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

fn now() -> prost_types::Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl Client {
    fn import_rpc(&self, image: &str, op: &'static str, subject: &str, s: Status) -> ImportError {
        ImportError::Rpc {
            image: image.to_owned(),
            op,
            subject: subject.to_owned(),
            source: Box::new(s),
        }
    }

    /// Imports the one image in the OCI archive at `archive` into this client's namespace,
    /// named `name` or by its `io.containerd.image.name` annotation, and unpacks it.
    pub async fn import_archive(
        &self,
        archive: &Path,
        name: Option<&str>,
    ) -> Result<Imported, ImportError> {
        let mut ar = Archive::open(archive)?;
        let plan = plan(&mut ar, name)?;
        self.store(&plan, &mut ar).await
    }

    /// True when image `name` exists here and is unpacked (its top snapshot exists): what a
    /// pull checks before it asks any registry.
    pub async fn image_present(&self, name: &str) -> Result<bool, ImportError> {
        let info = match self.image_info(name).await {
            Ok(i) => i,
            Err(ImportError::NotFound { .. }) => return Ok(false),
            // Content missing or unreadable: not usable, so not present.
            Err(ImportError::Content { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(info.chain_id.is_empty() || self.snapshot_exists(name, &info.chain_id).await?)
    }

    /// Writes what `plan` names from `src` into the content store, unpacks it and creates (or
    /// retargets) the image record, under a lease. Nothing is written when an image of that name
    /// already targets the same digest and is unpacked.
    pub(crate) async fn store(
        &self,
        plan: &Plan,
        src: &mut impl BlobSource,
    ) -> Result<Imported, ImportError> {
        if let Some(img) = self.get_image(&plan.name).await? {
            let same =
                img.target.as_ref().map(|t| t.digest.as_str()) == Some(plan.target.digest.as_str());
            if same
                && (plan.top().is_empty() || self.snapshot_exists(&plan.name, plan.top()).await?)
            {
                return Ok(Imported {
                    name: plan.name.clone(),
                    digest: plan.target.digest.clone(),
                    already_present: true,
                    blobs_written: 0,
                    layers_unpacked: 0,
                });
            }
        }
        let lease = self.lease(LEASE_EXPIRY).await?;
        let result = lease.client().store_plan(src, plan).await;
        // The lease only guarded the work in progress; what was imported is referenced by now.
        // A lease that cannot be deleted expires by itself: not worth failing the import for.
        let lease_id = lease.id().to_owned();
        if let Err(e) = lease.release().await {
            log::warn!("image {}: lease {lease_id} left to expire: {e}", plan.name);
        }
        let (blobs_written, layers_unpacked) = result?;
        Ok(Imported {
            name: plan.name.clone(),
            digest: plan.target.digest.clone(),
            already_present: false,
            blobs_written,
            layers_unpacked,
        })
    }

    async fn store_plan(
        &self,
        src: &mut impl BlobSource,
        plan: &Plan,
    ) -> Result<(usize, usize), ImportError> {
        let image = plan.name.as_str();
        // Layers and config first, the manifest (which references them) last.
        let mut blobs: Vec<(&Desc, HashMap<String, String>)> = Vec::new();
        for (l, diff_id) in plan.layers.iter().zip(&plan.diff_ids) {
            blobs.push((
                l,
                HashMap::from([(LABEL_UNCOMPRESSED.into(), diff_id.clone())]),
            ));
        }
        blobs.push((&plan.config, HashMap::new()));
        let mut manifest_labels =
            HashMap::from([(LABEL_GC_CONFIG.to_owned(), plan.config.digest.clone())]);
        for (i, l) in plan.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        blobs.push((&plan.manifest, manifest_labels));
        if let Some(pos) = plan.index_pos {
            blobs.push((
                &plan.target,
                HashMap::from([(
                    format!("containerd.io/gc.ref.content.m.{pos}"),
                    plan.manifest.digest.clone(),
                )]),
            ));
        }
        let layers = plan.layers.len();
        let mut written = 0;
        for (i, (desc, labels)) in blobs.into_iter().enumerate() {
            if self.content_info(image, &desc.digest).await?.is_some() {
                continue;
            }
            if i < layers {
                log::info!(
                    "{} {image}: layer {}/{layers} {}",
                    plan.action,
                    i + 1,
                    human_size(desc.size)
                );
            }
            if self.write_blob(src, image, desc, labels).await? {
                written += 1;
            }
        }

        let mut unpacked = 0;
        let mut parent = String::new();
        for ((layer, diff_id), chain) in plan.layers.iter().zip(&plan.diff_ids).zip(&plan.chain_ids)
        {
            if !self.snapshot_exists(image, chain).await? {
                self.unpack_layer(image, layer, diff_id, chain, &parent)
                    .await?;
                unpacked += 1;
            }
            parent = chain.clone();
        }
        if let Some(top) = plan.chain_ids.last() {
            let info = Info {
                digest: plan.config.digest.clone(),
                labels: HashMap::from([(LABEL_GC_SNAPSHOT.to_owned(), top.clone())]),
                ..Default::default()
            };
            self.content()
                .update(UpdateRequest {
                    info: Some(info),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{LABEL_GC_SNAPSHOT}")],
                    }),
                })
                .await
                .map_err(|e| self.import_rpc(image, "Content.Update", &plan.config.digest, e))?;
        }

        let record = Image {
            name: plan.name.clone(),
            labels: HashMap::new(),
            target: Some(plan.target.to_proto()),
            created_at: Some(now()),
            updated_at: Some(now()),
        };
        let created = self
            .images()
            .create(CreateImageRequest {
                image: Some(record.clone()),
                source_date_epoch: None,
            })
            .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                self.images()
                    .update(UpdateImageRequest {
                        image: Some(record),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into()],
                        }),
                        source_date_epoch: None,
                    })
                    .await
                    .map_err(|e| self.import_rpc(image, "Images.Update", image, e))?;
            }
            Err(s) => return Err(self.import_rpc(image, "Images.Create", image, s)),
        }
        Ok((written, unpacked))
    }

    /// Writes one blob from `src`, message by message (each answered before the next is sent,
    /// so at most one chunk is in memory). containerd checks size and digest on commit. Returns
    /// false when containerd already had it.
    async fn write_blob<S: BlobSource>(
        &self,
        src: &mut S,
        image: &str,
        desc: &Desc,
        labels: HashMap<String, String>,
    ) -> Result<bool, ImportError> {
        let size = u64::try_from(desc.size).map_err(|_| ImportError::Content {
            image: image.to_owned(),
            digest: desc.digest.clone(),
            reason: format!("negative size {}", desc.size),
        })?;
        let rpc = |s: Status| self.import_rpc(image, "Content.Write", &desc.digest, s);
        let reference = format!("ros-import-{}", desc.digest);
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(1);
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let (first, mut pos) = next_write(src, image, desc, size, 0, &reference, &labels).await?;
        let mut sent_commit = first.action == WriteAction::Commit as i32;
        // The channel holds one message; containerd answers it before reading the next.
        if tx.send(first).await.is_err() {
            return Err(rpc(Status::aborted("write stream closed")));
        }
        let mut responses = match self.content().write(stream).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(false),
            Err(s) => return Err(rpc(s)),
        };
        loop {
            match responses.message().await {
                Ok(Some(r)) if r.action == WriteAction::Commit as i32 => return Ok(true),
                Ok(Some(_)) => {}
                Ok(None) => return Err(rpc(Status::unknown("write stream ended before commit"))),
                Err(s) if s.code() == Code::AlreadyExists => return Ok(false),
                Err(s) => return Err(rpc(s)),
            }
            if !sent_commit {
                let (req, end) =
                    next_write(src, image, desc, size, pos, &reference, &labels).await?;
                sent_commit = req.action == WriteAction::Commit as i32;
                pos = end;
                if tx.send(req).await.is_err() {
                    return Err(rpc(Status::aborted("write stream closed")));
                }
            }
        }
    }

    /// Applies one layer onto a new active snapshot over `parent` and commits it as `chain`.
    async fn unpack_layer(
        &self,
        image: &str,
        layer: &Desc,
        diff_id: &str,
        chain: &str,
        parent: &str,
    ) -> Result<(), ImportError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let key = format!("ros-unpack-{nanos}-{chain}");
        let prepared = self
            .snapshots()
            .prepare(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent: parent.to_owned(),
                labels: HashMap::new(),
            })
            .await
            .map_err(|e| self.import_rpc(image, "Snapshots.Prepare", chain, e))?
            .into_inner();
        let result = async {
            let applied = self
                .diff()
                .apply(ApplyRequest {
                    diff: Some(layer.to_proto()),
                    mounts: prepared.mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                })
                .await
                .map_err(|e| self.import_rpc(image, "Diff.Apply", &layer.digest, e))?
                .into_inner();
            let actual = applied.applied.map(|d| d.digest).unwrap_or_default();
            if actual != diff_id {
                return Err(ImportError::DiffId {
                    image: image.to_owned(),
                    digest: layer.digest.clone(),
                    expected: diff_id.to_owned(),
                    actual,
                });
            }
            self.snapshots()
                .commit(CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain.to_owned(),
                    key: key.clone(),
                    labels: HashMap::new(),
                })
                .await
                .map_err(|e| self.import_rpc(image, "Snapshots.Commit", chain, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self
                .snapshots()
                .remove(RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key,
                })
                .await;
        }
        result
    }

    async fn content_info(&self, image: &str, digest: &str) -> Result<Option<Info>, ImportError> {
        match self
            .content()
            .info(InfoRequest {
                digest: digest.to_owned(),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.import_rpc(image, "Content.Info", digest, s)),
        }
    }

    pub(crate) async fn snapshot_exists(
        &self,
        image: &str,
        key: &str,
    ) -> Result<bool, ImportError> {
        match self
            .snapshots()
            .stat(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_owned(),
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(self.import_rpc(image, "Snapshots.Stat", key, s)),
        }
    }

    async fn get_image(&self, name: &str) -> Result<Option<Image>, ImportError> {
        match self
            .images()
            .get(GetImageRequest {
                name: name.to_owned(),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.import_rpc(name, "Images.Get", name, s)),
        }
    }

    /// A blob from the content store, at most [`MAX_JSON`] bytes.
    async fn read_content(&self, image: &str, digest: &str) -> Result<Vec<u8>, ImportError> {
        let rpc = |s| self.import_rpc(image, "Content.Read", digest, s);
        let mut stream = self
            .content()
            .read(ReadContentRequest {
                digest: digest.to_owned(),
                offset: 0,
                size: 0,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(rpc)? {
            out.extend_from_slice(&chunk.data);
            if out.len() as u64 > MAX_JSON {
                return Err(ImportError::Content {
                    image: image.to_owned(),
                    digest: digest.to_owned(),
                    reason: format!("larger than {MAX_JSON} bytes"),
                });
            }
        }
        let actual = sha256_digest(&out);
        if actual != digest {
            return Err(ImportError::Content {
                image: image.to_owned(),
                digest: digest.to_owned(),
                reason: format!("content store returned {actual}"),
            });
        }
        Ok(out)
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        image: &str,
        digest: &str,
    ) -> Result<(T, Vec<u8>), ImportError> {
        let bytes = self.read_content(image, digest).await?;
        let v = serde_json::from_slice(&bytes).map_err(|e| ImportError::Content {
            image: image.to_owned(),
            digest: digest.to_owned(),
            reason: e.to_string(),
        })?;
        Ok((v, bytes))
    }

    /// What ros needs to run image `name`: its config and the snapshot its rootfs comes from.
    /// An image whose target is an index resolves to its linux/amd64 manifest.
    pub async fn image_info(&self, name: &str) -> Result<ImageInfo, ImportError> {
        let img = self
            .get_image(name)
            .await?
            .ok_or_else(|| ImportError::NotFound {
                image: name.to_owned(),
                namespace: self.namespace().to_owned(),
            })?;
        let target = img.target.unwrap_or_default();
        let mut manifest_digest = target.digest.clone();
        if MEDIA_INDEX.contains(&target.media_type.as_str()) {
            let (index, _): (Index, _) = self.read_json(name, &target.digest).await?;
            manifest_digest = index
                .linux_amd64()
                .map(|(_, d)| d.digest.clone())
                .ok_or_else(|| ImportError::Content {
                    image: name.to_owned(),
                    digest: target.digest.clone(),
                    reason: "no linux/amd64 manifest in the index".into(),
                })?;
        }
        let (manifest, _): (Manifest, _) = self.read_json(name, &manifest_digest).await?;
        let (cfg, raw): (ConfigBlob, _) = self.read_json(name, &manifest.config.digest).await?;
        let config = ImageConfig::from_json(name, &raw).map_err(|e| ImportError::Content {
            image: name.to_owned(),
            digest: manifest.config.digest.clone(),
            reason: e.to_string(),
        })?;
        Ok(ImageInfo {
            name: name.to_owned(),
            manifest_digest,
            config_digest: manifest.config.digest,
            chain_id: chain_ids(&cfg.rootfs.diff_ids).pop().unwrap_or_default(),
            config,
            stop_signal: cfg
                .config
                .and_then(|c| c.stop_signal)
                .filter(|s| !s.is_empty()),
        })
    }

    /// The image's runtime config (entrypoint, cmd, env, working dir, user).
    pub async fn image_config(&self, name: &str) -> Result<ImageConfig, ImportError> {
        Ok(self.image_info(name).await?.config)
    }

    /// Deletes the image record; with `sync`, waits for the garbage collection that removes
    /// its content and snapshots (unless other images or containers still use them).
    pub async fn remove_image(&self, name: &str, sync: bool) -> Result<(), ImportError> {
        match self
            .images()
            .delete(DeleteImageRequest {
                name: name.to_owned(),
                sync,
                target: None,
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Err(ImportError::NotFound {
                image: name.to_owned(),
                namespace: self.namespace().to_owned(),
            }),
            Err(s) => Err(self.import_rpc(name, "Images.Delete", name, s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_chain_ids_follow_the_oci_rule() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_digest(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn test_index_picks_the_first_linux_amd64_manifest() {
        let index: Index = serde_json::from_value(serde_json::json!({"manifests": [
            {"digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:b", "size": 1},
            {"digest": "sha256:c", "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:d", "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        ]}))
        .unwrap();
        let (pos, d) = index.linux_amd64().unwrap();
        assert_eq!((pos, d.digest.as_str()), (2, "sha256:c"));
        let none: Index = serde_json::from_value(serde_json::json!({"manifests": [
            {"digest": "sha256:a", "size": 1, "platform": {"os": "windows", "architecture": "amd64"}},
        ]}))
        .unwrap();
        assert!(none.linux_amd64().is_none());
    }

    #[test]
    fn test_digest_must_be_sha256_hex() {
        assert!(sha256_hex(&format!("sha256:{}", "0f".repeat(32))).is_some());
        assert!(sha256_hex("sha256:../../etc/passwd").is_none());
        assert!(sha256_hex(&format!("sha512:{}", "0".repeat(64))).is_none());
        assert!(sha256_hex(&format!("sha256:{}", "A".repeat(64))).is_none());
    }

    /// Writes an OCI layout tar with one empty-ish layer; returns its path and manifest digest.
    fn archive(dir: &Path, annotate: bool, tamper: bool) -> (PathBuf, String) {
        let layer = b"not really a tar, the plan does not look inside".to_vec();
        let diff_id = format!("sha256:{}", "1".repeat(64));
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/sh"], "StopSignal": "SIGKILL"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let desc = |media: &str, b: &[u8]| serde_json::json!({"mediaType": media, "digest": sha256_digest(b), "size": b.len()});
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST[0],
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
        }))
        .unwrap();
        let mut mdesc = desc(MEDIA_MANIFEST[0], &manifest);
        if annotate {
            mdesc["annotations"] = serde_json::json!({ANNOTATION_NAME: "docker.io/ros/t:1"});
        }
        let index =
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [mdesc]}))
                .unwrap();
        let path = dir.join("t.oci.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut add = |name: String, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json".into(), &index);
        let mut manifest_bytes = manifest.clone();
        if tamper {
            manifest_bytes.push(b' ');
        }
        for blob in [&layer, &config] {
            add(format!("blobs/sha256/{}", &sha256_digest(blob)[7..]), blob);
        }
        add(
            format!("blobs/sha256/{}", &sha256_digest(&manifest)[7..]),
            &manifest_bytes,
        );
        b.finish().unwrap();
        (path, sha256_digest(&manifest))
    }

    #[test]
    fn test_plan_reads_name_layers_and_chain_from_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let (path, digest) = archive(dir.path(), true, false);
        let mut ar = Archive::open(&path).unwrap();
        let p = plan(&mut ar, None).unwrap();
        assert_eq!(p.name, "docker.io/ros/t:1");
        assert_eq!(p.manifest.digest, digest);
        assert_eq!(p.layers.len(), 1);
        assert_eq!(p.chain_ids, p.diff_ids, "one layer: chain ID = diff ID");
        let p = plan(&mut ar, Some("ros/other:2")).unwrap();
        assert_eq!(p.name, "ros/other:2", "an explicit name wins");
    }

    #[test]
    fn test_plan_refuses_unnamed_and_tampered_archives() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = archive(dir.path(), false, false);
        let err = plan(&mut Archive::open(&path).unwrap(), None)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("no io.containerd.image.name annotation"),
            "{err}"
        );
        let (path, digest) = archive(dir.path(), true, true);
        let err = plan(&mut Archive::open(&path).unwrap(), None)
            .err()
            .unwrap();
        assert!(
            matches!(err, ImportError::Digest { digest: ref d, .. } if *d == digest),
            "{err}"
        );
    }

    #[test]
    fn test_missing_archive_names_the_path() {
        let err = Archive::open(Path::new("/nonexistent/x.oci.tar"))
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("/nonexistent/x.oci.tar: "),
            "{err}"
        );
    }
}
