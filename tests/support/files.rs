//! A static file server on loopback, for pages a test serves as a server
//! would (a vLLM `/metrics` page written from its documentation).

use std::path::{Path, PathBuf};

/// Serves the files of one folder over HTTP until dropped.
pub struct Files {
    _runtime: tokio::runtime::Runtime,
    /// `http://127.0.0.1:PORT`; a file `x.txt` is at `{url}/x.txt`.
    pub url: String,
}

impl Files {
    /// Serves `dir` on a free loopback port: `GET /NAME` answers the file
    /// `dir/NAME` as text, anything else 404.
    pub fn serve(dir: &Path) -> Files {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir: PathBuf = dir.to_owned();
        let url = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("an address");
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                let name = uri.path().trim_start_matches('/').to_owned();
                let path = dir.join(&name);
                async move {
                    use axum::http::StatusCode;
                    // One plain name: nothing outside the folder.
                    let plain = !name.is_empty() && !name.contains('/') && !name.starts_with('.');
                    match plain.then(|| std::fs::read_to_string(&path)) {
                        Some(Ok(text)) => (StatusCode::OK, text),
                        _ => (StatusCode::NOT_FOUND, format!("no file {name:?}\n")),
                    }
                }
            });
            tokio::spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}")
        });
        Files { _runtime: runtime, url }
    }
}
