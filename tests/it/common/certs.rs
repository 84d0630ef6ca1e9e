//! Throwaway TLS material made with the `openssl` command: a private CA and a server certificate
//! it signed, for TLS tests against mosquitto and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA (`ca.pem`, `ca.key`) and a server certificate it signed (`server.pem`, `server.key`)
/// for `127.0.0.1` and `localhost` (subjectAltName IP and DNS), valid for two days, in a temp
/// dir of their own. ECDSA P-256 keys: quick to make. Two `TestPki`s are unrelated: the CA of
/// one does not trust the server certificate of the other.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("enalysis-it-pki-")
            .tempdir()
            .expect("create a temp dir for certificates");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        // A name of its own, so that another TestPki's CA is not even a candidate issuer (the
        // client then says "UnknownIssuer", as with any unrelated CA).
        let subject = format!("/CN=enalysis test CA {}", uuid::Uuid::new_v4().simple());
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-days", "2", "-subj", &subject]);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        run_checked("openssl", &ca, d);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend(["-subj", "/CN=127.0.0.1", "-keyout", "server.key"]);
        csr.extend(["-out", "server.csr"]);
        run_checked("openssl", &csr, d);
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write san.ext");
        run_checked(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "server.pem",
            ],
            d,
        );
        TestPki { dir }
    }

    /// The temp dir holding the files (other test files may go there too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate, PEM: what a client trusts.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    /// The server certificate, PEM.
    pub fn server_cert(&self) -> PathBuf {
        self.dir().join("server.pem")
    }

    /// The server's private key, PEM (PKCS#8), unencrypted.
    pub fn server_key(&self) -> PathBuf {
        self.dir().join("server.key")
    }
}

/// Runs `cmd args` in `dir` and panics with its stderr unless it succeeds (certificate and
/// password-file tooling: openssl, mosquitto_passwd).
pub fn run_checked(cmd: &str, args: &[&str], dir: &Path) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
