//! Rebuilds the crate when a migration is added, removed or edited:
//! `embed_migrations!` reads the `migrations/` folder at compile time, and
//! without this cargo would not notice a new migration directory.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
