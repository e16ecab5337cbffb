"""The remote side of backups: an S3-compatible bucket (AWS S3, Cloudflare R2, Backblaze B2, MinIO).

Imports boto3, so only sidecar/backup.py imports it, and only when backups are
configured: a sidecar without backups never pays for boto3 at start.

Credentials come from the settings, or boto3's default chain when unset
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance role).
They are never logged or returned: `redact()` takes them (and any password in
the endpoint URL) out of every error message.
"""
import hashlib
import json
import os
import time
from urllib.parse import urlsplit, urlunsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

MiB = 1024 * 1024
# Bounded memory on a 512 MB host: two 16 MiB parts in flight, one PUT below 64 MiB.
TRANSFER = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=16 * MiB, max_concurrency=2)
Errors = (BotoCoreError, ClientError, OSError)


class ChecksumMismatch(Exception):
    """A downloaded object is not what the manifest says it is."""


class Deadline(Exception):
    """A restore took longer than its time limit."""


class S3Store:
    def __init__(self, bucket, prefix="", endpoint_url=None, region=None, access_key_id=None,
                 secret_access_key=None, attempts=3, connect_timeout_s=10, read_timeout_s=60):
        self.bucket = bucket
        self.prefix = prefix
        self._secrets = [value for value in (access_key_id, secret_access_key) if value and len(value) >= 6]
        self.endpoint_url = endpoint_url or None
        config = Config(
            connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
            retries={"max_attempts": attempts, "mode": "standard"},
            # S3-compatible services (R2, B2, MinIO) do not all accept the CRC checksums
            # boto3 sends by default since 1.36; the sidecar checks SHA-256 itself.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if endpoint_url else None)
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=region or None,
            aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
            config=config)

    @classmethod
    def from_settings(cls, settings, **kwargs):
        return cls(settings["backup_s3_bucket"], normalize_prefix(settings["backup_s3_prefix"]),
                   settings["backup_s3_endpoint_url"], settings["backup_s3_region"],
                   settings["backup_s3_access_key_id"], settings["backup_s3_secret_access_key"], **kwargs)

    # -- naming --------------------------------------------------------------
    def key(self, *parts):
        return self.prefix + "/".join(parts)

    def describe(self):
        """Where backups go, safe to print: no credentials."""
        where = "s3://{}/{}".format(self.bucket, self.prefix)
        return where + (" at {}".format(redact_url(self.endpoint_url)) if self.endpoint_url else "")

    def redact(self, error):
        text = str(error)
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        if self.endpoint_url:
            text = text.replace(self.endpoint_url, redact_url(self.endpoint_url))
        return text

    # -- objects --------------------------------------------------------------
    def list(self, sub):
        """{key: size} of every object under prefix + sub."""
        found = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(sub)):
            for item in page.get("Contents", ()):
                found[item["Key"]] = item["Size"]
        return found

    def upload(self, key, path, sha256, metadata=None):
        meta = {"sha256": sha256}
        meta.update({name: str(value) for name, value in (metadata or {}).items()})
        self.client.upload_file(path, self.bucket, key, ExtraArgs={"Metadata": meta}, Config=TRANSFER)
        return os.path.getsize(path)

    def metadata(self, key):
        """The object's user metadata, or None when it does not exist."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key).get("Metadata", {})
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def put_json(self, key, document):
        body = json.dumps(document, indent=1, sort_keys=True).encode()
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def get_json(self, key):
        """The JSON document at `key`, or None when there is none."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return json.loads(body)

    def delete(self, keys):
        keys = sorted(keys)
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": key} for key in chunk], "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OSError("deleting {}: {}".format(first.get("Key"), first.get("Message") or first.get("Code")))
        return len(keys)

    def download(self, key, dest_path, sha256, deadline=None, attempts=3):
        """Stream `key` into `dest_path`, checking its SHA-256 on the way; raise ChecksumMismatch
        (nothing is kept) when it differs, Deadline past `deadline` (time.monotonic())."""
        for attempt in range(attempts):
            try:
                return self._download_once(key, dest_path, sha256, deadline)
            except (BotoCoreError, OSError):  # a dropped connection mid-stream: try again
                if attempt == attempts - 1 or (deadline is not None and time.monotonic() > deadline):
                    raise
                time.sleep(0.5 * (attempt + 1))

    def _download_once(self, key, dest_path, sha256, deadline):
        digest = hashlib.sha256()
        size = 0
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            with open(dest_path, "wb") as handle:
                for chunk in body.iter_chunks(MiB):
                    if deadline is not None and time.monotonic() > deadline:
                        raise Deadline("the restore ran out of time while downloading {}".format(key))
                    digest.update(chunk)
                    handle.write(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            _remove(dest_path)
            raise
        finally:
            body.close()
        if digest.hexdigest() != sha256:
            _remove(dest_path)
            raise ChecksumMismatch("{}: SHA-256 {} does not match the manifest's {}".format(
                key, digest.hexdigest(), sha256))
        return size


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def normalize_prefix(prefix):
    prefix = (prefix or "").strip().lstrip("/")
    return prefix + "/" if prefix and not prefix.endswith("/") else prefix


def redact_url(url):
    """An endpoint URL without a user name or password in it."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += ":{}".format(parts.port)
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url
