"""Colour metadata of a video stream and the YUV <-> RGB matrix its frames are converted with.

The model works on 8-bit RGB; video stores Y'CbCr. Which matrix (BT.601, BT.709, BT.2020) and which range (limited
"tv" 16-235 or full "pc" 0-255) turn one into the other is a tag of the stream; a player decodes with the tagged
matrix, and an untagged stream with BT.709 when it is HD (height above 576) and BT.601 otherwise. Frames are
decoded to RGB with the matrix a player would use and encoded back with the same one, and the output carries the
source's tags (matrix and range always, with the assumed matrix written out when the source had none; primaries and
transfer as tagged), so the output plays with the source's colours.

The numbers are FFmpeg's (AVColorSpace, AVColorRange, AVColorPrimaries, AVColorTransferCharacteristic), the values
PyAV's frames and codec contexts carry.
"""

from __future__ import annotations

from dataclasses import dataclass

UNSPECIFIED = 2                   # AVCOL_SPC/PRI/TRC_UNSPECIFIED
RANGE_TV, RANGE_PC = 1, 2         # AVCOL_RANGE_MPEG (16-235), AVCOL_RANGE_JPEG (0-255)
MATRIX_BT709, MATRIX_SMPTE170M = 1, 6
SD_MAX_HEIGHT = 576               # players take an untagged stream above this height for HD (BT.709)

MATRIX_NAMES = {0: "rgb", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "ycgco",
                9: "bt2020nc", 10: "bt2020c"}
# AVColorSpace -> swscale's SWS_CS_* constant (what PyAV's reformat takes): 601 has three names, 2020 two.
SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
PRIMARIES_NAMES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film", 9: "bt2020",
                   10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "ebu3213"}
TRANSFER_NAMES = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear",
                  11: "iec61966-2-4", 13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084",
                  18: "arib-std-b67"}
HDR_TRANSFERS = (16, 18)          # PQ and HLG


def name_of(table: dict[int, str], value: int) -> str:
    return table.get(value, "unspecified" if value in (0, UNSPECIFIED) else f"#{value}")


@dataclass(frozen=True)
class ColourInfo:
    """A stream's colour tags and the conversion used for it.

    matrix: AVColorSpace used for YUV <-> RGB (the tagged one, or the assumed one when ``matrix_tagged`` is False).
    colour_range: RANGE_TV or RANGE_PC (untagged: tv, as players assume for YUV).
    primaries, transfer: as tagged (UNSPECIFIED when not); carried to the output, never converted.
    """

    matrix: int
    colour_range: int
    primaries: int = UNSPECIFIED
    transfer: int = UNSPECIFIED
    matrix_tagged: bool = True
    range_tagged: bool = True

    @classmethod
    def from_tags(cls, matrix: int, colour_range: int, primaries: int, transfer: int, height: int) -> ColourInfo:
        """The tags a decoded frame carries -> what to convert with (untagged: as a player would assume)."""
        matrix_tagged = matrix in SWS_MATRIX
        if not matrix_tagged:
            matrix = MATRIX_BT709 if height > SD_MAX_HEIGHT else MATRIX_SMPTE170M
        range_tagged = colour_range in (RANGE_TV, RANGE_PC)
        return cls(matrix, colour_range if range_tagged else RANGE_TV, primaries or UNSPECIFIED,
                   transfer or UNSPECIFIED, matrix_tagged, range_tagged)

    @property
    def sws_matrix(self) -> int:
        return SWS_MATRIX[self.matrix]

    @property
    def hdr(self) -> bool:
        return self.transfer in HDR_TRANSFERS

    def describe(self) -> str:
        """"bt709 matrix (tagged), tv range, primaries bt709, transfer bt709"."""
        matrix = (f"{name_of(MATRIX_NAMES, self.matrix)} matrix "
                  f"({'tagged' if self.matrix_tagged else 'untagged: assumed by frame height'})")
        return (f"{matrix}, {'pc' if self.colour_range == RANGE_PC else 'tv'} range, "
                f"primaries {name_of(PRIMARIES_NAMES, self.primaries)}, "
                f"transfer {name_of(TRANSFER_NAMES, self.transfer)}")

    def as_dict(self) -> dict:
        return {"matrix": name_of(MATRIX_NAMES, self.matrix), "matrix_tagged": self.matrix_tagged,
                "range": "pc" if self.colour_range == RANGE_PC else "tv", "range_tagged": self.range_tagged,
                "primaries": name_of(PRIMARIES_NAMES, self.primaries),
                "transfer": name_of(TRANSFER_NAMES, self.transfer)}
