# libferry for users: one static (libferry.a) and one shared library
# (libferry.so.0) holding every layer, archived and linked from the objects
# the layer libraries already compiled, so nothing is compiled twice. The
# layer libraries stay what tests, benches and scripts/check-layers.sh use.
#
# The shared library exports only the functions the public headers
# (include/ferry/*.h) declare: a version script generated from them at
# configure time, so a function added to a header is exported without a
# list to keep by hand.

set(FERRY_LIB_OBJECTS "")
foreach(layer ${FERRY_LAYERS})
  list(APPEND FERRY_LIB_OBJECTS $<TARGET_OBJECTS:ferry_${layer}>)
endforeach()

# libibverbs as the build links it, and as an installed ferry's users link
# it (-libverbs from the default library path).
set(FERRY_VERBS_LINK "")
if(FERRY_HAVE_RDMA)
  if(IBVERBS_FOUND)
    set(FERRY_VERBS_LINK PkgConfig::IBVERBS)
  else()
    set(FERRY_VERBS_LINK ${IBVERBS_LIBRARY})
  endif()
endif()

add_library(ferry_static STATIC ${FERRY_LIB_OBJECTS})
set_target_properties(ferry_static PROPERTIES OUTPUT_NAME ferry EXPORT_NAME ferry_static)
target_include_directories(ferry_static INTERFACE
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_link_libraries(ferry_static INTERFACE Threads::Threads m)
if(FERRY_HAVE_RDMA)
  target_link_libraries(ferry_static INTERFACE
    $<BUILD_INTERFACE:${FERRY_VERBS_LINK}> $<INSTALL_INTERFACE:ibverbs>)
endif()
set(FERRY_LIB_TARGETS ferry_static)

if(FERRY_BUILD_SHARED)
  file(GLOB FERRY_PUBLIC_HEADERS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/include/ferry/*.h)
  set(api "")
  set(not_api "")
  foreach(h ${FERRY_PUBLIC_HEADERS})
    file(READ ${h} text)
    string(REGEX MATCHALL "ferry_[a-z0-9_]+[ \t]*\\(" calls "${text}")
    list(APPEND api ${calls})
    # macros and static inline functions are not in the library
    string(REGEX MATCHALL "(#define|static inline[^(;{}]*)[ \t]+ferry_[a-z0-9_]+\\(" local "${text}")
    list(APPEND not_api ${local})
  endforeach()
  list(TRANSFORM api REPLACE "[ \t]*\\($" "")
  list(TRANSFORM not_api REPLACE "^.*[ \t](ferry_[a-z0-9_]+)\\($" "\\1")
  list(REMOVE_DUPLICATES api)
  if(not_api)
    list(REMOVE_ITEM api ${not_api})
  endif()
  list(SORT api)
  list(JOIN api ";\n    " api_lines)
  set(FERRY_VERSION_SCRIPT ${CMAKE_BINARY_DIR}/libferry.map)
  file(CONFIGURE OUTPUT ${FERRY_VERSION_SCRIPT} CONTENT
    "/* generated from include/ferry/*.h by cmake/libferry.cmake */\n{\n  global:\n    ${api_lines};\n  local: *;\n};\n")

  add_library(ferry_shared SHARED ${FERRY_LIB_OBJECTS})
  set_target_properties(ferry_shared PROPERTIES
    OUTPUT_NAME ferry EXPORT_NAME ferry
    VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
    LINK_DEPENDS ${FERRY_VERSION_SCRIPT})
  target_include_directories(ferry_shared INTERFACE
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_link_libraries(ferry_shared PRIVATE Threads::Threads m ${FERRY_VERBS_LINK})
  # -Bsymbolic: calls inside the library bind to its own functions, as the
  # objects were compiled to assume (-fno-semantic-interposition).
  target_link_options(ferry_shared PRIVATE
    -Wl,--version-script=${FERRY_VERSION_SCRIPT} -Wl,-Bsymbolic)
  if(NOT FERRY_SANITIZE)
    target_link_options(ferry_shared PRIVATE -Wl,--no-undefined)
  endif()
  list(APPEND FERRY_LIB_TARGETS ferry_shared)
endif()
