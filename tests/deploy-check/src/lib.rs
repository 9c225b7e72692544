//! No code: this crate only holds `tests/deploy.rs`, which checks the deployment files
//! (`docker-compose.yml`, `deploy/Dockerfile`, `deploy/k8s/`) against the Compose schema in
//! `schemas/` (here) and against what the Rust sources actually read (environment
//! variables, default ports, binaries, queue names).
