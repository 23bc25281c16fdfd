//! py-spiffe and spiffe-tls snippets (run with [`crate::python`]) that play SPIFFE workloads
//! against an agent's Workload API (`SOCK`: its `unix://` endpoint): one-shot fetches, a watcher,
//! and an mTLS server and client that check each other's SPIFFE IDs. Shared by the Workload API
//! tests and `scenarios demo --workload-api`.

/// What py-spiffe's one-shot fetches return, printed as `key=value` lines.
pub const FETCH: &str = r#"
import os
from cryptography.hazmat.primitives import serialization as s
from spiffe import WorkloadApiClient, TrustDomain
c = WorkloadApiClient(socket_path=os.environ["SOCK"])
svid = c.fetch_x509_svid(timeout=10)
print("id=" + str(svid.spiffe_id))
print("serial=" + format(svid.leaf.serial_number, "x"))
print("chain=" + b"".join(x.public_bytes(s.Encoding.DER) for x in svid.cert_chain).hex())
pk = lambda k: k.public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo)
print("key_is_leafs=" + str(pk(svid.private_key.public_key()) == pk(svid.leaf.public_key())))
on_disk = s.load_pem_private_key(open(os.environ["KEY"], "rb").read(), None)
p8 = lambda k: k.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, s.NoEncryption())
print("key_is_key_pem=" + str(p8(svid.private_key) == p8(on_disk)))
bundles = c.fetch_x509_bundles(timeout=10)
print("domains=" + ",".join(sorted(str(b.trust_domain) for b in bundles.bundles)))
b = bundles.get_bundle_for_trust_domain(TrustDomain("default"))
print("authorities=" + ",".join(sorted(a.public_bytes(s.Encoding.DER).hex() for a in b.x509_authorities)))
"#;

/// A client that watches FetchX509SVID and prints each SVID it receives.
pub const WATCH: &str = r#"
import os, threading
from spiffe import WorkloadApiClient
c = WorkloadApiClient(socket_path=os.environ["SOCK"])
def got(ctx):
    svid = ctx.default_svid
    print("SVID " + str(svid.spiffe_id) + " " + format(svid.leaf.serial_number, "x"), flush=True)
def failed(e):
    print("ERROR " + str(e), flush=True)
c.stream_x509_contexts(got, failed)
threading.Event().wait()
"#;

/// A spiffe-tls server: one mTLS connection from a client with the SPIFFE ID `PEER`, answered
/// with `hello from ID`.
pub const SERVE: &str = r#"
import os
from spiffe import X509Source, SpiffeId
from spiffetls import listen, ListenOptions
from spiffetls.tlsconfig.authorize import authorize_id
source = X509Source(socket_path=os.environ["SOCK"], timeout_in_seconds=30)
server = listen("127.0.0.1:" + os.environ["PORT"], source, ListenOptions(authorize_fn=authorize_id(SpiffeId(os.environ["PEER"]))))
print("LISTENING", flush=True)
while True:
    conn, _ = server.accept()
    try:
        conn.do_handshake()
        msg = conn.recv(1024)
        print("SERVED " + msg.decode(), flush=True)
        conn.sendall(b"hello from " + str(source.svid.spiffe_id).encode())
        conn.shutdown()
    except Exception as e:
        print("REFUSED " + type(e).__name__ + ": " + str(e), flush=True)
    finally:
        conn.close()
"#;

/// A spiffe-tls client that expects the server's SPIFFE ID to be `PEER`.
pub const DIAL: &str = r#"
import os
from spiffe import X509Source, SpiffeId
from spiffetls import dial
from spiffetls.tlsconfig.authorize import authorize_id
source = X509Source(socket_path=os.environ["SOCK"], timeout_in_seconds=30)
try:
    conn = dial("127.0.0.1:" + os.environ["PORT"], source, authorize_fn=authorize_id(SpiffeId(os.environ["PEER"])))
    conn.sendall(b"ping from " + str(source.svid.spiffe_id).encode())
    print("ANSWER " + conn.recv(1024).decode())
    conn.close()
except Exception as e:
    print("FAILED " + type(e).__name__ + ": " + str(e))
source.close()
"#;
