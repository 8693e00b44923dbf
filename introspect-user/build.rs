//! Builds the eBPF programs (introspect-ebpf) with the installed nightly and bpf-linker, and
//! embeds the object in the CLI (see `loader.rs`).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf =
        metadata.packages.into_iter().find(|p| p.name.as_str() == "introspect-ebpf").ok_or_else(|| anyhow!("introspect-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("introspect-ebpf manifest has no parent"))?;
    // The shared types change the programs too.
    println!("cargo:rerun-if-changed={}", root_dir.join("../introspect-common/src"));
    aya_build::build_ebpf(
        [Package { name: "introspect-ebpf", root_dir: root_dir.as_str(), no_default_features: false, features: &[] }],
        // The machine's `nightly` (LLVM 22) matches bpf-linker's LLVM; `rustup update` would break it.
        Toolchain::Nightly,
    )
}
