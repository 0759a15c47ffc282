//! `cargo xtask fetch-models` (to be implemented).

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("fetch-models is not implemented yet")
}
