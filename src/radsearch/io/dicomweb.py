"""A PACS as a source: walk studies/series/instances with QIDO-RS, fetch with WADO-RS.

``iter_dicomweb("dicomweb:http://HOST:PORT/dicom-web")`` yields one ``ItemRef`` per
image instance (one per frame for multi-frame instances) with ids made from the SOP
Instance UID (``<sop>`` or ``<sop>#frame=N``), so re-running an index adds only new
instances. Fetched instances are cached as ``.dcm`` files (``radsearch index`` keeps
them in ``INDEX_DIR/dicomweb/``) which ``load_pixels`` reads and ``radsearch serve``
renders; instances whose ids are already indexed are not fetched again.

Each item carries ``study_uid``, ``series_uid``, ``sop_uid``, ``modality``,
``body_part``, ``patient_id`` (stripped by ``serve`` unless ``--show-phi``),
``number_of_frames``, ``pacs_url`` (the WADO-RS rendered URL) and, for Orthanc,
``viewer_url`` (Orthanc Explorer's page for the instance). Credentials are never
stored. Filters are applied on the client: this Orthanc does not decode percent-encoded
QIDO wildcards, so no wildcard query is ever sent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from radsearch.errors import SourceError
from radsearch.io.items import ItemRef
from radsearch.io.sources import matches

log = logging.getLogger(__name__)

SCHEME = "dicomweb:"
ENV_USER = "RADSEARCH_DICOMWEB_USER"
ENV_PASSWORD = "RADSEARCH_DICOMWEB_PASSWORD"
ENV_TOKEN = "RADSEARCH_DICOMWEB_TOKEN"
ENV_CACHE = "RADSEARCH_DICOMWEB_CACHE"
CACHE_DIRNAME = "dicomweb"
# Modalities / SOP classes that hold no pixels worth indexing.
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "KO", "PR", "DOC", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "FID"}
)
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key objects
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects (dose, structures, plans)
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registration, segmentation
)
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")
_TAGS = {
    "study_uid": "0020000D",
    "series_uid": "0020000E",
    "sop_uid": "00080018",
    "sop_class": "00080016",
    "modality": "00080060",
    "body_part": "00180015",
    "patient_id": "00100020",
    "number_of_frames": "00280008",
}
FILTER_KEYS = ("modality", "body_part", "study_uid", "series_uid", "sop_uid", "patient_id")


def is_dicomweb(spec) -> bool:
    return str(spec).startswith(SCHEME)


def parse_url(spec: str) -> str:
    """``dicomweb:http://host:8042/dicom-web/`` -> ``http://host:8042/dicom-web``."""
    url = str(spec)[len(SCHEME) :] if is_dicomweb(spec) else str(spec)
    if not re.match(r"^https?://[^/\s]+", url):
        raise SourceError(f"{spec}: expected dicomweb:http(s)://HOST[:PORT]/PATH")
    if re.match(r"^https?://[^/@]*@", url):
        raise SourceError(
            f"{spec}: put credentials in --dicomweb-user/--dicomweb-password, not the URL"
        )
    return url.rstrip("/")


def _value(obj: Mapping, key: str) -> str:
    """A QIDO JSON attribute (``{"vr":..., "Value": [...]}``) as text ('' when absent)."""
    attr = obj.get(_TAGS[key]) or {}
    values = attr.get("Value") or []
    if not values:
        return ""
    v = values[0]
    if isinstance(v, dict):  # person names
        v = v.get("Alphabetic", "")
    return str(v).strip()


def make_session(user: str | None = None, password: str | None = None, token: str | None = None):
    """A ``requests`` session with basic or bearer auth (defaults from the environment)."""
    import requests

    user = user if user is not None else os.environ.get(ENV_USER)
    password = password if password is not None else os.environ.get(ENV_PASSWORD)
    token = token if token is not None else os.environ.get(ENV_TOKEN)
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, password or "")
    return session


def orthanc_root(url: str, session) -> str | None:
    """Orthanc's REST root when ``url`` is an Orthanc DICOMweb endpoint, else None."""
    root = url.rsplit("/", 1)[0] if url.rsplit("/", 1)[-1] else url
    try:
        r = session.get(f"{root}/system", timeout=10)
        if r.ok and "ApiVersion" in r.json() and "DicomAet" in r.json():
            return root
    except Exception:  # not Orthanc, or not reachable there: links fall back to WADO
        pass
    return None


def orthanc_id(*uids: str) -> str:
    """Orthanc's public id of a resource: SHA-1 of ``PatientID|Study|Series|SOP`` (prefix)."""
    h = hashlib.sha1("|".join(uids).encode()).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def default_cache_dir(url: str) -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    tag = hashlib.sha1(url.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "radsearch" / CACHE_DIRNAME / tag


def _safe(uid: str) -> str:
    return uid if _UID.match(uid) else hashlib.sha1(uid.encode()).hexdigest()


def _is_image(modality: str, sop_class: str) -> bool:
    if modality.upper() in NON_IMAGE_MODALITIES:
        return False
    return not sop_class.startswith(NON_IMAGE_SOP_PREFIXES)


def _matches(meta: Mapping, where: Mapping[str, frozenset], keys) -> bool:
    """The source filter test on the ``keys`` this level of the DICOMweb tree knows."""
    return matches({k: meta.get(k, "") for k in keys}, where, partial=True)


def _fetch(client, study: str, series: str, sop: str, path: Path) -> str | None:
    """Download one instance to ``path`` (atomically); returns an error text or None."""
    try:
        ds = client.retrieve_instance(study, series, sop)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
        return None
    except Exception as exc:  # network, HTTP or DICOM errors: reported per item
        return f"{type(exc).__name__}: {exc}"


def _parse_filters(spec: str, where: Mapping | None) -> dict[str, frozenset]:
    """``column -> value(s)`` (a comma list or an iterable) as sets, on ``FILTER_KEYS`` only."""
    filters = {
        str(k): frozenset(
            v.strip() for v in (str(val).split(",") if isinstance(val, str) else map(str, val))
        )
        for k, val in (where or {}).items()
    }
    unknown = [k for k in filters if k not in FILTER_KEYS]
    if unknown:
        raise SourceError(
            f"{spec}: cannot filter on {unknown[0]!r}; available: {', '.join(FILTER_KEYS)}"
        )
    return filters


def _search_studies(client, url: str) -> list:
    """The QIDO-RS study list; a refused login or a dead server is a ``SourceError`` here,
    before anything is indexed, with a hint at the credentials for 401/403."""
    try:
        return client.search_for_studies(fields=["PatientID"], get_remaining=True)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = (
            " (check --dicomweb-user/--dicomweb-password or --dicomweb-token)"
            if status in (401, 403)
            else ""
        )
        raise SourceError(
            f"{url}: QIDO-RS study search failed ({type(exc).__name__}: {exc}){hint}"
        ) from None


def _frame_ids(sop: str, frames: int) -> list[str]:
    return [sop] if frames == 1 else [f"{sop}#frame={n}" for n in range(frames)]


@dataclass
class _Walk:
    """One walk down a DICOMweb server's study -> series -> instance tree.

    Each level drops what the filters rule out before asking the next level, so a
    filtered index queries and fetches only what it keeps; a failed series or instance
    search is logged and skipped, never fatal."""

    url: str
    client: object
    cache: Path
    filters: Mapping[str, frozenset]
    known_ids: set[str] | frozenset[str]
    orthanc: str | None  # Orthanc's REST root, for viewer links; None for other servers

    def items(self, studies) -> Iterator[ItemRef]:
        for st in studies:
            study, patient = _value(st, "study_uid"), _value(st, "patient_id")
            keys = ("study_uid", "patient_id")
            if study and _matches({"study_uid": study, "patient_id": patient}, self.filters, keys):
                yield from self._series(study, patient)

    def _series(self, study: str, patient: str) -> Iterator[ItemRef]:
        try:
            series_list = self.client.search_for_series(
                study, fields=["Modality", "BodyPartExamined"], get_remaining=True
            )
        except Exception as exc:
            log.warning("%s: series search of study %s failed: %s", self.url, study, exc)
            return
        for se in series_list:
            base = {
                "study_uid": study,
                "series_uid": _value(se, "series_uid"),
                "modality": _value(se, "modality"),
                "body_part": _value(se, "body_part"),
                "patient_id": patient,
            }
            if not base["series_uid"] or not _matches(
                base, self.filters, ("series_uid", "modality", "body_part")
            ):
                continue
            if base["modality"].upper() not in NON_IMAGE_MODALITIES:
                yield from self._instances(base)

    def _instances(self, base: dict) -> Iterator[ItemRef]:
        study, series = base["study_uid"], base["series_uid"]
        try:
            instances = self.client.search_for_instances(
                study, series, fields=["NumberOfFrames", "SOPClassUID"], get_remaining=True
            )
        except Exception as exc:
            log.warning("%s: instance search of series %s failed: %s", self.url, series, exc)
            return
        for inst in instances:
            sop = _value(inst, "sop_uid")
            if not sop or not _is_image(base["modality"], _value(inst, "sop_class")):
                continue
            meta = dict(base, sop_uid=sop)
            if _matches(meta, self.filters, ("sop_uid",)):
                yield from self._refs(meta, _value(inst, "number_of_frames"))

    def _refs(self, meta: dict, frames_text: str) -> Iterator[ItemRef]:
        """The items of one instance: fetched into the cache unless all its ids are known,
        then completed (and filtered again) from the cached file's header."""
        study, series, sop = meta["study_uid"], meta["series_uid"], meta["sop_uid"]
        path = self.cache / _safe(study) / _safe(series) / f"{_safe(sop)}.dcm"
        try:
            frames = max(1, int(float(frames_text or 1)))
        except ValueError:
            frames = 1
        ids = _frame_ids(sop, frames)
        if not (set(ids) <= set(self.known_ids)) and not path.exists():
            err = _fetch(self.client, study, series, sop, path)
            if err:
                log.warning("%s: WADO-RS retrieve of %s failed: %s", self.url, sop, err)
        if path.exists():
            frames = self._complete_from_header(meta, path, frames)
            if frames is None:
                return
            ids = _frame_ids(sop, frames)
        meta["number_of_frames"] = str(frames)
        for n, item_id in enumerate(ids):
            yield ItemRef(
                item_id, str(path), n if frames > 1 else None, self._links(meta, n, frames)
            )

    def _complete_from_header(self, meta: dict, path: Path, frames: int) -> int | None:
        """Fill what QIDO left empty from the cached header; the header's frame count, or
        None when the now-known modality or body part is filtered out."""
        from radsearch.io.dicom import metadata_from_header, read_dicom_header

        try:
            header = metadata_from_header(read_dicom_header(path))
        except Exception:
            header = {}
        for key in ("modality", "body_part", "patient_id"):
            if not meta.get(key) and header.get(key):
                meta[key] = str(header[key])
        if header.get("number_of_frames"):
            frames = int(header["number_of_frames"])
        if header and not _matches(meta, self.filters, ("modality", "body_part")):
            return None
        return frames

    def _links(self, meta: dict, frame: int, frames: int) -> dict:
        """``meta`` plus the WADO-RS rendered URL of this frame and Orthanc's viewer page."""
        study, series, sop = meta["study_uid"], meta["series_uid"], meta["sop_uid"]
        instance_url = f"{self.url}/studies/{study}/series/{series}/instances/{sop}"
        m = dict(meta)
        m["pacs_url"] = (
            f"{instance_url}/frames/{frame + 1}/rendered"
            if frames > 1
            else f"{instance_url}/rendered"
        )
        if self.orthanc:
            m["viewer_url"] = (
                f"{self.orthanc}/app/explorer.html#instance?uuid="
                f"{orthanc_id(meta['patient_id'], study, series, sop)}"
            )
        return m


def iter_dicomweb(
    spec: str,
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    known_ids: set[str] | frozenset[str] = frozenset(),
    where: Mapping | None = None,
    timeout: float = 60,
    client=None,
) -> Iterator[ItemRef]:
    """Every image instance (frame) of a DICOMweb server as an ``ItemRef``.

    The server is queried when this is called (a wrong URL or password fails here);
    instances are fetched lazily as items are yielded. ``known_ids``: ids already
    indexed, yielded without fetching. ``where``: ``column -> value(s)`` on
    ``FILTER_KEYS``, applied before fetching where the level allows.
    """
    url = parse_url(spec)
    filters = _parse_filters(spec, where)
    session = make_session(user, password, token)
    if client is None:
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(url=url, session=session, timeout=timeout)
    studies = _search_studies(client, url)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(url)
    walk = _Walk(url, client, cache, filters, known_ids, orthanc_root(url, session))
    return walk.items(studies)


def refs_for_index(
    spec: str,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    where: Mapping | None = None,
) -> list[ItemRef]:
    """The refs ``radsearch index dicomweb:URL --out DIR`` embeds: instances cached in
    ``DIR/dicomweb/``, already-indexed ids not fetched again. Saves the (empty) index
    before fetching so that the cache can live inside it."""
    from radsearch.pipeline import open_or_create

    index = open_or_create(out, model)  # refuses a folder that is not an index
    refs = iter_dicomweb(  # queries the server now: a bad URL or password leaves no index
        spec,
        user=user,
        password=password,
        token=token,
        cache_dir=Path(out) / CACHE_DIRNAME,
        known_ids=index.ids,
        where=where,
    )
    if not (Path(out) / "manifest.json").exists():
        index.save()
    return list(refs)
