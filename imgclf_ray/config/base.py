"""What every spec section shares: the strict base model, the identifier rule, storage access."""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from imgclf_ray.ids import id_problem


DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm")


# Pillow's own default for Image.MAX_IMAGE_PIXELS (about 89.5 megapixels).
PILLOW_MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


LAYOUT_FIELDS = ("run_id", "date", "year", "month", "day", "name")


# Names that would put a credential into a spec; refused with a pointer to where they belong.
SECRET_KEYS = {
    "key", "secret", "token", "password", "session_token", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "access_key", "secret_key",
}


def plain_name(v: str) -> str:
    """A field validator's half of the identifier rule (imgclf_ray.ids)."""
    problem = id_problem(v)
    if problem:
        raise ValueError(problem)
    return v


# A job's or training job's name: part of run ids and state paths.
PlainName = Annotated[str, AfterValidator(plain_name)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # (1e400 is a float: infinity)


class StorageSpec(Section):
    """How to reach object storage. Credentials never go here: they come from the environment
    (``AWS_ACCESS_KEY_ID`` ...), a named profile, or the machine's role."""

    endpoint_url: Optional[str] = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph, a moto server); default: AWS, "
        "or the AWS_ENDPOINT_URL environment variable.")
    region: Optional[str] = Field(None, description="Region of the bucket, e.g. eu-west-1.")
    profile: Optional[str] = Field(None, description="Named profile from ~/.aws/config to use.")
    anon: bool = Field(False, description="Read public buckets without credentials.")

    def fsspec_options(self, protocol: str) -> dict[str, Any]:
        """Keyword arguments for ``fsspec.filesystem(protocol, ...)``."""
        if protocol not in ("s3", "s3a"):
            return {}
        # A run lists each prefix once; a cached listing in a long-lived process would miss new files.
        opts: dict[str, Any] = {"use_listings_cache": False}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region:
            opts["client_kwargs"] = {"region_name": self.region}
        if self.profile:
            opts["profile"] = self.profile
        if self.anon:
            opts["anon"] = True
        return opts
