//! A tiny test image built here, with no registry: Debian's static busybox in a `FROM scratch`-like
//! root filesystem, imported into the engine.

use std::path::Path;

use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::Mutex;

pub const BUSYBOX_IMAGE: &str = "spot-test-busybox:2";

const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "env", "ls", "true", "false", "printf",
];

static IMPORT: Mutex<()> = Mutex::const_new(());

pub async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .expect("docker socket")
        .negotiate_version()
        .await
        .expect("docker engine answers")
}

/// Makes sure the busybox test image exists, importing it once.
pub async fn busybox_image() -> &'static str {
    let _guard = IMPORT.lock().await;
    let docker = docker().await;
    if docker.inspect_image(BUSYBOX_IMAGE).await.is_ok() {
        return BUSYBOX_IMAGE;
    }
    let rootfs = rootfs_tar(Path::new("/bin/busybox"));
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo("spot-test-busybox")
        .tag("2")
        // A default command, for jobs that give none (seed 004 has no `cmd`).
        .changes(vec![
            "ENV PATH=/bin".to_string(),
            r#"CMD ["sh", "-c", "echo hello from the image"]"#.to_string(),
        ])
        .build();
    let mut import =
        docker.create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
    while let Some(progress) = import.next().await {
        progress.expect("importing the busybox image");
    }
    BUSYBOX_IMAGE
}

fn rootfs_tar(busybox: &Path) -> Vec<u8> {
    let binary = std::fs::read(busybox).expect("busybox-static is installed (/bin/busybox)");
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    tar.append_data(&mut header, "bin/", std::io::empty())
        .expect("tar dir");
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(binary.len() as u64);
    tar.append_data(&mut header, "bin/busybox", binary.as_slice())
        .expect("tar busybox");
    for applet in APPLETS {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        tar.append_link(&mut header, format!("bin/{applet}"), "busybox")
            .expect("tar link");
    }
    tar.into_inner().expect("tar done")
}
