"""The GCS emulator of the remote-workdir tests: gcp-storage-emulator (PyPI) on
127.0.0.1, fitted with two behaviours of GCS that a run directory's clients rely on and
that the emulator lacks:

- a download says which generation of the object it returns (the x-goog-generation
  and x-goog-metageneration headers): tensorstore, orbax's array store, reads it to
  make its conditional writes (without it: "Malformed StorageGeneration");
- a single-request upload honours ifGenerationMatch (412 Precondition Failed when the
  object's generation differs; 0: the object must not exist yet): tensorstore's OCDBT
  commits and run.lock's exclusive create (paths.create_exclusive) rely on it.
  Resumable uploads (objects over gcsfs's 50 MiB) still ignore it.

  python tests/gcs_emulator.py --port=PORT --bucket=NAME
"""
import argparse
import threading
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator import storage as storage_lib
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_upload = threading.local()  # the ifGenerationMatch of the upload this thread serves


class _PreconditionFailed(Exception):
  pass


def _generation(storage, bucket: str, name: str) -> str:
  """The object's generation; "0" when it does not exist (as GCS counts)."""
  try:
    return str(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return "0"


def _fit(original_download, original_insert, original_create_file):
  def download(request, response, storage, *args, **kwargs):
    original_download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"],
                                 request.params["object_id"])
    except NotFound:
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])

  def insert(request, response, storage, *args, **kwargs):
    wanted = request.query.get("ifGenerationMatch")
    _upload.wanted = wanted[0] if wanted else None
    try:
      return original_insert(request, response, storage, *args, **kwargs)
    except _PreconditionFailed:
      response.status = HTTPStatus.PRECONDITION_FAILED
      response.json({"error": {"code": 412, "message": "Precondition Failed"}})
    finally:
      _upload.wanted = None

  def create_file(self, bucket_name, file_name, content, file_obj, file_id=None):
    wanted = getattr(_upload, "wanted", None)
    if wanted is not None and _generation(self, bucket_name, file_name) != wanted:
      raise _PreconditionFailed()
    return original_create_file(self, bucket_name, file_name, content, file_obj, file_id)

  return download, insert, create_file


def install() -> None:
  """Fits the emulator's handlers (module state: call once, before serving)."""
  download, insert, create_file = _fit(objects.download, objects.insert,
                                       storage_lib.Storage.create_file)
  fitted = {objects.download: download, objects.insert: insert}
  storage_lib.Storage.create_file = create_file
  objects.download, objects.insert = download, insert  # also called by name
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      handlers[method] = fitted.get(handler, handler)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--bucket", required=True)
  args = parser.parse_args()
  install()
  server.create_server("127.0.0.1", args.port, in_memory=True,
                       default_bucket=args.bucket).run()


if __name__ == "__main__":
  main()
