#!/usr/bin/env bash
# Rebuilds datasets/sample/ from real photographs shipped in Debian's `opencv-doc`
# and in the scikit-image wheel from PyPI. Run once by a maintainer; the result is
# committed. Needs: apt-get install opencv-doc imagemagick libimage-exiftool-perl libjpeg-turbo-progs;
# pip download --no-deps scikit-image==0.26.0 (unzipped into $SKIMAGE).
set -euo pipefail
CV=/usr/share/doc/opencv-doc/examples
SKIMAGE=${SKIMAGE:-/tmp/wheels/sk/skimage/data}
OUT=${1:-datasets/sample}
rm -rf "$OUT"; mkdir -p "$OUT/train" "$OUT/val"

# wnid  source  description
CLASSES="n02486410 $CV/data/baboon.jpg
n02356798 $CV/data/squirrel_cls.jpg
n07747607 $CV/data/orange.jpg
n07742313 $CV/data/apple.jpg
n04254680 $CV/data/messi5.jpg
n01558993 $CV/hfs/data/000.jpg
n02123045 $SKIMAGE/chelsea.png
n07920052 $SKIMAGE/coffee.png
n03991062 $CV/alphamat/input_images/plant.jpg
n03785016 $SKIMAGE/motorcycle_left.png
n03877845 $CV/data/home.jpg
n04008634 $SKIMAGE/rocket.jpg"

echo "ImageId,PredictionString" > "$OUT/LOC_val_solution.csv"
: > "$OUT/LOC_synset_mapping.txt"
v=0
while read -r wnid src; do
  d="$OUT/train/$wnid"; mkdir -p "$d"
  name=$(grep -P "^\d+\t$wnid\t" crates/data/imagenet/classes.tsv | cut -f3)
  echo "$wnid $name" >> "$OUT/LOC_synset_mapping.txt"
  # the photo itself, re-saved as a baseline JPEG (quality 92)
  convert "$src" -strip -quality 92 "$d/${wnid}_1.JPEG"
  # three crops of different regions and scales (a deterministic "ImageNet-like" variety)
  i=2
  for g in "80%x80%+0+0" "75%x85%+20+10" "70%x70%-0-0"; do
    convert "$src" -gravity $( [ $i = 4 ] && echo SouthEast || echo NorthWest ) -crop "$g" +repage -strip -quality 90 "$d/${wnid}_$i.JPEG"
    i=$((i+1))
  done
  # one validation image: a centre crop, flat in val/ with its label in the Kaggle CSV form
  v=$((v+1)); vf=$(printf "sample_val_%08d" $v)
  convert "$src" -gravity Center -crop 85%x85%+0+0 +repage -strip -quality 90 "$OUT/val/$vf.JPEG"
  echo "$vf,$wnid 0 0 10 10" >> "$OUT/LOC_val_solution.csv"
done <<< "$CLASSES"

# Real-world oddities, as found in ILSVRC2012:
T=$OUT/train
cp "$SKIMAGE/chelsea.png" "$T/n02123045/n02123045_png.JPEG"                          # a PNG named .JPEG
convert "$CV/data/baboon.jpg" -colorspace Gray -quality 90 "$T/n02486410/n02486410_gray.JPEG"   # grayscale JPEG
convert "$CV/data/orange.jpg" -colorspace CMYK -quality 90 "$T/n07747607/n07747607_cmyk.JPEG"   # CMYK JPEG
convert "$CV/data/squirrel_cls.jpg" -interlace JPEG -quality 90 "$T/n02356798/n02356798_progressive.JPEG"
convert "$CV/data/apple.jpg" -resize 400x400 ppm:- | cjpeg -restart 1 -quality 90 > "$T/n07742313/n07742313_restart.JPEG"  # restart markers (cjpeg: libjpeg-turbo-progs)
convert "$CV/data/messi5.jpg" -quality 88 "$T/n04254680/n04254680_exif.JPEG"
exiftool -q -overwrite_original -Orientation=6 -n -Make=Sample -Model=resnet-imagenet "$T/n04254680/n04254680_exif.JPEG"
convert "$CV/data/home.jpg" -resize 2600x1950 -quality 80 "$T/n03877845/n03877845_huge.JPEG"   # larger than the 480 limit
convert "$CV/data/orange.jpg" -resize 20x20 -quality 90 "$T/n07747607/n07747607_tiny.JPEG"     # far smaller than a crop
head -c 9000 "$T/n02486410/n02486410_1.JPEG" > "$T/n02486410/n02486410_truncated.JPEG"          # truncated download
echo "<html>404 Not Found</html>" > "$T/n03991062/n03991062_notanimage.JPEG"                   # not an image at all
du -sh "$OUT"
