"""The error hierarchy of sgma-batch, with one distinct process exit code per kind.

Every error a user can cause derives from :class:`SgmaError` and also from the builtin callers already
catch (``ValueError``, ``LookupError``, ``OSError``, ``RuntimeError``). The CLI prints ``str(err)`` as one
line and exits with ``err.exit_code``; ``docs/reliability.md`` lists the codes and messages.

Exit codes: 0 success, 1 unexpected internal error, 2 command-line usage, 3 partial result (the job
finished but some tiles are degraded or failed), 4 nothing found, 5 Ray cluster unreachable; 10-19 AOI, 20-29 catalogue and
search, 30-39 model, checkpoint and domain, 40-49 output store, 50-59 training and chips, 60-69 data/assets;
143 stopped by SIGTERM (:class:`Terminated`).
"""

from __future__ import annotations


class SgmaError(Exception):
    """Base class of every expected, user-facing error."""

    exit_code: int = 1


# -- generic outcomes -------------------------------------------------------------------------------
class UsageError(SgmaError, ValueError):
    exit_code = 2


class Terminated(SystemExit):
    """The process was sent SIGTERM; raised by the run's handler so that every ``finally`` runs (actors
    killed, Ray shut down) before the process exits with 143, the shell's code for it."""

    exit_code = 143

    def __init__(self) -> None:
        super().__init__(self.exit_code)


class ClusterUnreachableError(SgmaError, ConnectionError):
    """The Ray cluster (``--address``, ``RAY_ADDRESS``) cannot be reached or did not answer in time."""

    exit_code = 5


class NothingFoundError(SgmaError, LookupError):
    """A search or a plan matched nothing: not a crash, but nothing to do."""

    exit_code = 4


# -- AOI (10-19) ------------------------------------------------------------------------------------
class AOIError(SgmaError, ValueError):
    exit_code = 10


class AOIUnreadableError(AOIError):
    exit_code = 10


class AOINotGeoJSONError(AOIError):
    exit_code = 11


class AOIEmptyError(AOIError):
    exit_code = 12


class AOIInvalidGeometryError(AOIError):
    exit_code = 13


class AOIProjectedCoordinatesError(AOIError):
    exit_code = 14


class AOITooLargeError(AOIError):
    exit_code = 15


class AOIAntimeridianError(AOIError):
    exit_code = 16


class PlanTooLargeError(SgmaError, ValueError):
    """Parameters that plan more pixels, tiles or periods than the size guards allow."""

    exit_code = 18


class AOIOutsideCatalogError(AOIError, LookupError):
    """The AOI does not touch the area the catalogue covers (for the demo archive: a small synthetic area)."""

    exit_code = 17


# -- catalogue and search (20-29) -------------------------------------------------------------------
class CatalogError(SgmaError, RuntimeError):
    exit_code = 20


class CatalogUnreachableError(CatalogError):
    exit_code = 20


class UnknownCollectionError(CatalogError, LookupError):
    exit_code = 21


class InvalidTimeWindowError(SgmaError, ValueError):
    exit_code = 22


class UnsupportedSceneError(SgmaError, ValueError):
    """A scene the pipeline cannot put on a map grid (e.g. Sentinel-1 GRD in radar geometry)."""

    exit_code = 23


class TooManyItemsError(CatalogError):
    exit_code = 24


class UnsafeAssetError(SgmaError, ValueError):
    """An asset href with a scheme or location that a remote catalogue must not point at."""

    exit_code = 25


class SignerUnavailableError(SgmaError, ValueError):
    """A named href signer whose package is not installed (or cannot sign)."""

    exit_code = 26


# -- model and checkpoint (30-39): sgma_model.errors carries the same codes ---------------------------
class ModalityMismatchError(SgmaError, ValueError):
    """The model needs modalities the catalogue does not offer (none of them at all)."""

    exit_code = 33


class DomainShiftError(SgmaError, ValueError):
    """Scenes of another processing level or units than the model card was trained on (L1C for L2A, GRD
    dB for RTC); ``--allow-domain-shift`` turns it into a warning."""

    exit_code = 35


# -- output store (40-49) ---------------------------------------------------------------------------
class StoreError(SgmaError, OSError):
    exit_code = 40


class StoreIncompatibleError(StoreError):
    exit_code = 40


class StoreUnwritableError(StoreError):
    exit_code = 41


class StoreLockedError(StoreError):
    exit_code = 42


class StoreCorruptError(StoreError):
    exit_code = 43


class UnsafeOutputError(StoreError):
    """An output path sgma-batch refuses to create or replace: not a store of the expected kind, ``.``,
    ``~``, a mount point, a symlink, a file, a non-empty folder it did not write."""

    exit_code = 44


# -- training, chips, specs (50-59) -----------------------------------------------------------------
class SpecError(SgmaError, ValueError):
    exit_code = 50


class ChipStoreError(SgmaError, ValueError):
    exit_code = 51


# -- data and assets (60-69) ------------------------------------------------------------------------
class AssetReadError(SgmaError, OSError):
    exit_code = 60


class CorruptAssetError(AssetReadError):
    exit_code = 61


class EmptyDataError(SgmaError, ValueError):
    """Bands that hold no valid value at all (all NaN / nodata)."""

    exit_code = 62


class PermanentAssetError(AssetReadError):
    """An asset read that cannot succeed by retrying (404, 403, no range support, unknown host): not retried.
    Raised by the preflight (and by a run where it hit every tile) as a setup error."""

    exit_code = 63


class AssetNotFoundError(PermanentAssetError):
    exit_code = 63


class AssetAccessDeniedError(PermanentAssetError):
    exit_code = 64


class AssetNoRangeError(PermanentAssetError):
    exit_code = 65


class AssetHostUnreachableError(PermanentAssetError):
    exit_code = 66


class UnitMismatchError(SgmaError, ValueError):
    """Pixel values that contradict the sensor profile's units (dB read as linear, reflectance already
    scaled, ...)."""

    exit_code = 67
