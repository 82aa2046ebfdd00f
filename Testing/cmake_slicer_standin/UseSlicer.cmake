# Stand-in for Slicer's CMake/UseSlicer.cmake.in (see SlicerConfig.cmake): included by an
# extension's CMakeLists.txt after find_package(Slicer).
#
# Behaviour kept: EXTENSION_NAME defaults to the project name and may not be empty, "Slicer" or
# "Project"; the macros for scripted modules and Python tests are defined; the extension's module
# install directories are ${Slicer_INSTALL_ROOT}<bundle location><module dir> (no bundle location
# on Linux); extension defaults (EXTENSION_DEPENDS NA, EXTENSION_LICENSE_FILE / _README_FILE from
# Slicer's, EXTENSION_SOURCE_DIR, EXTENSION_SUPERBUILD_BINARY_DIR, EXTENSION_BUILD_SUBDIRECTORY,
# EXTENSION_ENABLED, the optional description metadata) are set when the extension did not set
# them; CTest is enabled (BUILD_TESTING) unless Slicer_SKIP_SlicerEnableExtensionTesting.

if(NOT DEFINED EXTENSION_NAME)
  if(DEFINED MODULE_NAME)
    set(EXTENSION_NAME ${MODULE_NAME})
  else()
    set(EXTENSION_NAME ${PROJECT_NAME})
  endif()
endif()
if("${EXTENSION_NAME}" MATCHES "^$|^Slicer$|^Project$")
  message(FATAL_ERROR
    "error: Make sure to call 'project(<extension_name>)' or set EXTENSION_NAME (or MODULE_NAME) "
    "prior to call 'include(\${Slicer_USE_FILE})' !")
endif()

include(CMakeParseArguments)
include(${Slicer_CMAKE_DIR}/ctkMacroCompilePythonScript.cmake)
include(${Slicer_CMAKE_DIR}/SlicerMacroPythonTesting.cmake)
include(${Slicer_CMAKE_DIR}/SlicerMacroBuildScriptedModule.cmake)

set(Slicer_BUNDLE_EXTENSIONS_LOCATION "")
set(Slicer_INSTALL_CLIMODULES_LIB_DIR "${Slicer_INSTALL_ROOT}${Slicer_BUNDLE_EXTENSIONS_LOCATION}${Slicer_CLIMODULES_LIB_DIR}")
set(Slicer_INSTALL_QTLOADABLEMODULES_LIB_DIR "${Slicer_INSTALL_ROOT}${Slicer_BUNDLE_EXTENSIONS_LOCATION}${Slicer_QTLOADABLEMODULES_LIB_DIR}")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_INSTALL_ROOT}${Slicer_BUNDLE_EXTENSIONS_LOCATION}${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_SHARE_DIR "${Slicer_INSTALL_ROOT}${Slicer_BUNDLE_EXTENSIONS_LOCATION}${Slicer_QTSCRIPTEDMODULES_SHARE_DIR}")

if(NOT DEFINED EXTENSION_DEPENDS)
  set(EXTENSION_DEPENDS NA)
endif()
if(NOT DEFINED EXTENSION_LICENSE_FILE)
  set(EXTENSION_LICENSE_FILE ${Slicer_LICENSE_FILE})
endif()
if(NOT DEFINED EXTENSION_README_FILE)
  set(EXTENSION_README_FILE ${Slicer_README_FILE})
endif()
if(NOT DEFINED EXTENSION_SOURCE_DIR)
  set(EXTENSION_SOURCE_DIR ${CMAKE_SOURCE_DIR})
endif()
if(NOT DEFINED EXTENSION_SUPERBUILD_BINARY_DIR)
  set(EXTENSION_SUPERBUILD_BINARY_DIR ${CMAKE_BINARY_DIR})
endif()
if(NOT DEFINED EXTENSION_BUILD_SUBDIRECTORY)
  set(EXTENSION_BUILD_SUBDIRECTORY ".")
endif()
if(NOT DEFINED EXTENSION_ENABLED)
  set(EXTENSION_ENABLED 1)
endif()
# Optional description metadata and their defaults (Extensions/CMake/SlicerExtensionDescriptionSpec.cmake).
foreach(_standin_pair RECOMMENDS=NA BUILD_SUBDIRECTORY=. HOMEPAGE= CONTRIBUTORS= CATEGORY= ICONURL=
                      DESCRIPTION= SCREENSHOTURLS= ENABLED=1 STATUS= TIER=1 DICOM_SUPPORT_RULE= KEYWORDS=)
  string(REPLACE "=" ";" _standin_pair "${_standin_pair}")
  list(GET _standin_pair 0 _standin_name)
  list(LENGTH _standin_pair _standin_n)
  set(_standin_default "")
  if(_standin_n GREATER 1)
    list(GET _standin_pair 1 _standin_default)
  endif()
  if(NOT DEFINED EXTENSION_${_standin_name})
    set(EXTENSION_${_standin_name} "${_standin_default}")
  endif()
endforeach()

if(NOT Slicer_SKIP_SlicerEnableExtensionTesting)
  include(CTest)
endif()
