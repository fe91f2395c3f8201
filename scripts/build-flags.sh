# Sourced by scripts/setup.sh and scripts/test.sh: the one configuration of
# build/, so that running one after the other rebuilds nothing.
FERRY_BUILD_FLAGS=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DFERRY_WERROR=ON)
