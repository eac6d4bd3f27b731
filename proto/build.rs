fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ipamd.proto");
    tonic_prost_build::configure().compile_protos(&["proto/ipamd.proto"], &["proto"])?;
    Ok(())
}
