//! Generates the Rust code of the sync protocol (`proto/kds.proto`) and of the proxy identity
//! stream (`proto/identity.proto`) with the vendored protoc (nothing to install by hand).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Resource payloads may hold Secret data, identity bundles a private key: their Debug is
        // written by hand, redacted.
        .skip_debug([
            "kmesh.sync.v1.Resource",
            "kmesh.identity.v1.IdentityResponse",
        ])
        .compile_with_config(
            config,
            &["proto/kds.proto", "proto/identity.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto/kds.proto");
    println!("cargo:rerun-if-changed=proto/identity.proto");
    Ok(())
}
