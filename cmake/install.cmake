# `cmake --install BUILD [--prefix DIR]`: the ferry tool, libferry (static
# and shared), the public headers, ferry.pc, the CMake package
# (find_package(ferry): ferry::ferry, ferry::ferry_static), the man pages
# and the example client. The layout is GNUInstallDirs'.
include(CMakePackageConfigHelpers)

set(FERRY_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/ferry)

install(TARGETS ferry-cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS ${FERRY_LIB_TARGETS} EXPORT ferryTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/ferry DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")

install(EXPORT ferryTargets NAMESPACE ferry:: DESTINATION ${FERRY_CMAKE_DIR})
configure_package_config_file(cmake/ferryConfig.cmake.in ${CMAKE_BINARY_DIR}/ferryConfig.cmake
  INSTALL_DESTINATION ${FERRY_CMAKE_DIR})
# 0.x: a minor release may change the API
write_basic_package_version_file(${CMAKE_BINARY_DIR}/ferryConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/ferryConfig.cmake ${CMAKE_BINARY_DIR}/ferryConfigVersion.cmake
  DESTINATION ${FERRY_CMAKE_DIR})

# ferry.pc names absolute paths, so it is written when installing, for the
# prefix given then (cmake --install --prefix), not the configured one.
set(FERRY_PC_REQUIRES_PRIVATE "")
set(FERRY_PC_LIBS_PRIVATE "-lpthread -lm")
if(FERRY_HAVE_RDMA)
  string(APPEND FERRY_PC_LIBS_PRIVATE " -libverbs")
  if(IBVERBS_FOUND)
    set(FERRY_PC_REQUIRES_PRIVATE libibverbs)
  endif()
endif()
# Without libferry.so, -lferry is the static library: its needs go in Libs.
set(FERRY_PC_LIBS "-lferry")
if(NOT FERRY_BUILD_SHARED)
  string(APPEND FERRY_PC_LIBS " ${FERRY_PC_LIBS_PRIVATE}")
endif()
install(CODE "
  set(FERRY_PC_IN \"${PROJECT_SOURCE_DIR}/cmake/ferry.pc.in\")
  set(FERRY_PC_OUT \"${CMAKE_BINARY_DIR}/ferry.pc\")
  set(FERRY_PC_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
  set(FERRY_PC_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
  set(FERRY_PC_VERSION \"${PROJECT_VERSION}\")
  set(FERRY_PC_REQUIRES_PRIVATE \"${FERRY_PC_REQUIRES_PRIVATE}\")
  set(FERRY_PC_LIBS \"${FERRY_PC_LIBS}\")
  set(FERRY_PC_LIBS_PRIVATE \"${FERRY_PC_LIBS_PRIVATE}\")
  include(\"${PROJECT_SOURCE_DIR}/cmake/write-pc.cmake\")")
install(FILES ${CMAKE_BINARY_DIR}/ferry.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

file(GLOB FERRY_MAN_PAGES CONFIGURE_DEPENDS man/*.1)
install(FILES ${FERRY_MAN_PAGES} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES examples/remote_add.c examples/CMakeLists.txt examples/Makefile examples/README
  DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
