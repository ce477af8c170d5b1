//! `lossyfs MOUNTPOINT BACKING_DIR --control SOCKET`: mounts a power-loss filesystem
//! (see the library) and serves its control commands (`lose-power`, `ping`, one per
//! line) on a Unix socket. Runs until unmounted (`fusermount3 -u MOUNTPOINT`) or
//! killed (the mount then goes too).

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: lossyfs MOUNTPOINT BACKING_DIR --control SOCKET";
    let (mountpoint, backing, control) = match args.as_slice() {
        [m, b, flag, c] if flag == "--control" => {
            (PathBuf::from(m), PathBuf::from(b), PathBuf::from(c))
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let result = lossyfs::run(&mountpoint, &backing, |handle| {
        std::thread::spawn(move || {
            if let Err(e) = handle.serve(&control) {
                eprintln!("lossyfs: control socket {}: {e}", control.display());
                std::process::exit(1);
            }
        });
    });
    if let Err(e) = result {
        eprintln!("lossyfs: {}: {e}", mountpoint.display());
        std::process::exit(1);
    }
}
