# Writes ferry.pc at install time (cmake/install.cmake): CMAKE_INSTALL_PREFIX
# is then the prefix being installed to.
foreach(dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${FERRY_PC_${dir}}")
    set(FERRY_PC_FULL_${dir} "${FERRY_PC_${dir}}")
  else()
    set(FERRY_PC_FULL_${dir} "\${prefix}/${FERRY_PC_${dir}}")
  endif()
endforeach()
set(FERRY_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
configure_file("${FERRY_PC_IN}" "${FERRY_PC_OUT}" @ONLY)
