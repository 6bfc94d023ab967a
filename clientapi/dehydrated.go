package clientapi

import "github.com/gorilla/mux"

func (a *API) dehydratedDeviceRoutes(r *mux.Router) {}
