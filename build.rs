//! Renders man pages and shell completions (bash, zsh, fish) from the clap
//! definitions into OUT_DIR; the binary embeds them (`tiervault completions`,
//! `tiervault manpages`).

#[allow(dead_code)]
#[path = "src/cli/args.rs"]
mod args;

use clap::CommandFactory;
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli/args.rs");
    // The static librocksdb.a (ROCKSDB_STATIC in .cargo/config.toml) needs
    // its compression libraries; given last on the linker's command line,
    // after the archive that uses them. librocksdb-dev depends on their
    // -dev packages, which hold these archives.
    for lib in ["snappy", "lz4", "zstd", "bz2", "z"] {
        println!("cargo:rustc-link-arg=-l:lib{lib}.a");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&comp_dir)?;

    let mut cmd = args::Cli::command();
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd, "tiervault", &comp_dir)?;
    }

    let cmd = args::Cli::command();
    let mut pages = vec![("tiervault.1".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("tiervault-{}", sub.get_name());
        pages.push((
            format!("{name}.1"),
            sub.clone().name(&*Box::leak(name.into_boxed_str())),
        ));
    }
    let mut index = String::from("pub const MAN_PAGES: &[(&str, &[u8])] = &[\n");
    for (file, page) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        std::fs::write(man_dir.join(&file), buf)?;
        writeln!(
            index,
            "    ({file:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/man/{file}\"))),"
        )
        .expect("string write");
    }
    index.push_str("];\n");
    std::fs::write(out.join("man_pages.rs"), index)?;
    Ok(())
}
