"""The Celery worker: conversion, preprocessing, inference, outputs, sending."""
